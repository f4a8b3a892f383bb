#!/usr/bin/env bash
# Installs Chromium from the Debian package: the e2e browser test (test/e2e/ui_test.go)
# renders the control plane's /debug/ page in headless Chromium and takes a screenshot.
# Idempotent and quick when Chromium is already installed: it then does nothing, not even
# apt-get update.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing chromium (Debian package)" >&2
$sudo apt-get update -qq
# --no-install-recommends keeps out the desktop bits (fonts beyond the default, the
# sandbox helper, the l10n packs) that a headless run does not use.
$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
chromium --version 2>&1 | head -n 1
