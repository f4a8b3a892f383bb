#!/usr/bin/env bash
# Builds kube-apiserver and etcd from pinned Go module versions (tools/kube/*/go.mod)
# into the git-ignored .cache/bin. Idempotent: skips a binary whose pinned go.mod is unchanged.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/bin"
mkdir -p "$bin"
build() { # name dir
  local name=$1 dir=$2
  local stamp="$bin/.$name.stamp"
  local want
  want="$(cat "$dir/go.mod" "$dir/main.go" | sha256sum | cut -c1-16)"
  if [ -x "$bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "building $name from $(grep -E '^require' "$dir/go.mod" | head -n1 | cut -d' ' -f2-) (a cold build of kube-apiserver takes about 5 minutes)" >&2
  (cd "$dir" && [ -f go.sum ] || (cd "$dir" && go mod tidy >/dev/null))
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$bin/$name" .)
  echo "$want" >"$stamp"
}
build etcd "$root/tools/kube/etcd"
build kube-apiserver "$root/tools/kube/apiserver"
