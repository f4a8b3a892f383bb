#!/usr/bin/env bash
# Installs Prometheus from the Debian package (we only need /usr/bin/prometheus; the
# package's systemd unit is never started here). Idempotent: does nothing when
# prometheus is already on PATH.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing prometheus (Debian package)" >&2
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -n 1
