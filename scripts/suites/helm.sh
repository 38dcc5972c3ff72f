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
exit $failed
