#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kubectl from pinned Go module versions (tools/kube/*/go.mod)
# into the git-ignored .cache/bin. Idempotent: skips a binary whose pinned go.mod is unchanged.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/bin"
mkdir -p "$bin"
build() { # name dir
  local name=$1 dir=$2
  local stamp="$bin/.$name.stamp"
  local want
  want="$(cat "$dir/go.mod" "$dir/go.sum" "$dir/main.go" | sha256sum | cut -c1-16)"
  if [ -x "$bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "building $name as pinned in ${dir#$root/}/go.mod (a cold build of kube-apiserver takes 5 to 15 minutes on 2 cores)" >&2
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$bin/$name" .)
  echo "$want" >"$stamp"
}
build etcd "$root/tools/kube/etcd"
build kube-apiserver "$root/tools/kube/apiserver"
build kubectl "$root/tools/kube/kubectl"
