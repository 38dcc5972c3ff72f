#!/usr/bin/env bash
# The Helm chart: helm lint --strict, and the hindsight.toml it renders must pass `config check`.
#   scripts/suites/helm.sh HINDSIGHT_BIN
source "$(dirname "$0")/../common.sh"
bin="${1:?usage: helm.sh HINDSIGHT_BIN}"
bash "$ROOT/scripts/install-helm.sh"
helm="$CACHE/helm/helm"; failed=0
if "$helm" lint --strict "$ROOT/helm/hindsight" >"$DEV/helm-lint.log" 2>&1; then echo "ok      helm lint --strict"
else echo "FAILED  helm lint --strict"; cat "$DEV/helm-lint.log"; failed=1; fi
rendered="$DEV/helm-rendered.toml"
"$helm" template t "$ROOT/helm/hindsight" --show-only templates/configmap.yaml \
  | python3 -c 'import sys; t=sys.stdin.read(); i=t.index("hindsight.toml: |"); print("\n".join(l[4:] for l in t[i:].splitlines()[1:]))' >"$rendered"
if out=$("$bin" config check "$rendered" 2>&1); then echo "ok      helm chart renders a valid hindsight.toml"
else echo "FAILED  helm chart renders an invalid hindsight.toml: $out"; failed=1; fi
if "$helm" template t "$ROOT/helm/hindsight" --set archive.enabled=true --show-only templates/archive.yaml 2>&1 \
    | grep -q 'command: \["hindsight-history"\]'; then echo "ok      helm chart renders the archive Deployment when enabled"
else echo "FAILED  helm chart: no archive Deployment with archive.enabled=true"; failed=1; fi

# Gates and footprints on: the rules ConfigMap, the admin Secret, the mounts and the state
# volume render, the rendered config passes `config check` with the token the pod gets from
# the Secret, and the rendered rules pass `rules check`.
on="$DEV/helm-gates.yaml"
"$helm" template t "$ROOT/helm/hindsight" --set gates.enabled=true --set footprints.enabled=true \
  --set adminToken.value=s3cret --set 'kafka.brokers[0]=kafka:9092' \
  --set-string 'footprints.applications.certification-v1=enforce' \
  --set-file gates.rules="$ROOT/tests/data/incident-rules.toml" >"$on"
python3 - "$on" "$DEV" <<'PY'
import sys, yaml, json, os
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
out = sys.argv[2]
open(os.path.join(out, "helm-gates.toml"), "w").write(by[("ConfigMap", "t-hindsight")]["data"]["hindsight.toml"])
open(os.path.join(out, "helm-rules.toml"), "w").write(by[("ConfigMap", "t-hindsight-rules")]["data"]["rules.toml"])
assert by[("Secret", "t-hindsight-admin")]["stringData"]["token"] == "s3cret"
pod = by[("Deployment", "t-hindsight")]["spec"]["template"]["spec"]
c = pod["containers"][0]
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
assert mounts["rules"] == "/etc/hindsight/rules" and mounts["state"] == "/var/lib/hindsight/state", mounts
vols = {v["name"]: v for v in pod["volumes"]}
assert vols["rules"]["configMap"]["name"] == "t-hindsight-rules" and "emptyDir" in vols["state"], vols
env = {e["name"]: e for e in c["env"]}
assert env["HINDSIGHT_ADMIN__TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "t-hindsight-admin", "key": "token"}, env
dash = by[("ConfigMap", "t-hindsight-dashboard")]
assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
assert json.loads(dash["data"]["hindsight.json"])["panels"]
PY
if [ $? -eq 0 ]; then echo "ok      helm chart with gates and footprints: rules ConfigMap, Secret, mounts, state volume, dashboard"
else echo "FAILED  helm chart with gates and footprints (see above)"; failed=1; fi
if out=$(HINDSIGHT_ADMIN__TOKEN=s3cret "$bin" config check "$DEV/helm-gates.toml" 2>&1) \
   && out2=$("$bin" rules check "$DEV/helm-rules.toml" 2>&1); then
  echo "ok      helm chart's rendered config and rules pass config check and rules check"
else echo "FAILED  helm chart's rendered config or rules: $out $out2"; failed=1; fi
if "$helm" template t "$ROOT/helm/hindsight" --set gates.enabled=true >/dev/null 2>"$DEV/helm-notoken.log" \
   || ! grep -q "need an admin token" "$DEV/helm-notoken.log"; then
  echo "FAILED  helm chart renders gates without an admin token"; failed=1
else echo "ok      helm chart refuses gates without an admin token"; fi
if "$helm" template t "$ROOT/helm/hindsight" --set historyServer.enabled=true --set historyServer.usersSecret=h \
    --show-only templates/history-server.yaml 2>&1 | grep -q 'hindsight-history history serve'; then
  echo "ok      helm chart renders the history SQL endpoint when enabled"
else echo "FAILED  helm chart: no history server with historyServer.enabled=true"; failed=1; fi
if "$helm" template t "$ROOT/helm/hindsight" --set inDoubt.existingSecret=pgdsn --show-only templates/deployment.yaml 2>&1 \
    | grep -A1 'HINDSIGHT_IN_DOUBT__DATABASE' | grep -q 'name: pgdsn, key: database'; then
  echo "ok      helm chart passes in_doubt.database from a Secret"
else echo "FAILED  helm chart: inDoubt.existingSecret does not reach HINDSIGHT_IN_DOUBT__DATABASE"; failed=1; fi
exit $failed
