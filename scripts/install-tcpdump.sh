#!/usr/bin/env bash
# Installs tcpdump from the Debian package: the e2e tests capture loopback traffic between
# two sidecars to prove that mutual TLS leaves no plaintext on the wire. Idempotent: does
# nothing when tcpdump is already installed.
set -euo pipefail
if command -v tcpdump >/dev/null 2>&1 || [ -x /usr/bin/tcpdump ] || [ -x /usr/sbin/tcpdump ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing tcpdump (Debian package)" >&2
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends tcpdump >/dev/null
tcpdump --version 2>&1 | head -n 1
