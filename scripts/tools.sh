#!/usr/bin/env bash
# Installs the deployment-check tools that are Go modules (not Debian packages)
# into a cache directory, idempotently, with pinned versions:
#
#   helm        helm.sh/helm/v3/cmd/helm              (helm lint / helm template)
#   kube-score  github.com/zegl/kube-score/cmd/kube-score (manifest checker)
#
#   scripts/tools.sh install   build what is missing or at another version (default)
#   scripts/tools.sh check     exit 0 when every tool is present at its pinned version
#   scripts/tools.sh bin       print the directory holding the tools
#
# The directory is $ROBOT_FLEET_TOOLS (default ~/.cache/robot-fleet/bin). The
# first install downloads and compiles the modules through the Go module proxy
# (a few minutes); later runs only check the version stamps. Uses `go` from PATH
# when it is 1.21 or newer (it fetches a newer toolchain itself if a module needs
# one); otherwise (Debian 12's golang-go is 1.19) it first fetches the Go
# toolchain module golang.org/toolchain from the Go module proxy into the cache.
set -euo pipefail

HELM_VERSION=v3.19.5
KUBE_SCORE_VERSION=v1.20.0

BIN_DIR=${ROBOT_FLEET_TOOLS:-$HOME/.cache/robot-fleet/bin}

# name|module@version
TOOLS=(
  "helm|helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  "kube-score|github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
)

GO_BOOTSTRAP_VERSION=1.24.6
CACHE_DIR=$(dirname "$BIN_DIR")

go_ok() { # go binary -> true when >= 1.21
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%[.a-z]*}
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 21 ]; }
}

find_go() {
  local g
  for g in "$(command -v go 2>/dev/null)" /usr/local/go/bin/go /usr/lib/go-*/bin/go \
           "$CACHE_DIR/go-toolchain/bin/go"; do
    [ -n "$g" ] && [ -x "$g" ] && go_ok "$g" && { echo "$g"; return 0; }
  done
  # Bootstrap: the Go toolchain is itself a module on the Go module proxy.
  local arch proxy zip dst=$CACHE_DIR/go-toolchain
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) return 1 ;; esac
  proxy=${GOPROXY:-https://proxy.golang.org}
  proxy=${proxy%%,*}
  [ "$proxy" = direct ] || [ "$proxy" = off ] && proxy=https://proxy.golang.org
  mkdir -p "$CACHE_DIR"
  zip=$CACHE_DIR/go-toolchain.zip
  echo "tools: fetching golang.org/toolchain go$GO_BOOTSTRAP_VERSION from $proxy" >&2
  curl -fsSL -o "$zip" \
    "$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_BOOTSTRAP_VERSION.linux-$arch.zip" >&2 || return 1
  rm -rf "$dst" "$dst.tmp"
  python3 - "$zip" "$dst.tmp" <<'PY' || return 1
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        parts = info.filename.split("/", 1)   # strip golang.org/toolchain@v.../
        if len(parts) < 2 or not parts[1] or info.is_dir():
            continue
        rel = info.filename.split("/", 2)[-1] if info.filename.startswith("golang.org/") else parts[1]
        out = os.path.join(sys.argv[2], rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as f:
            f.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        if mode or "/bin/" in "/" + rel or rel.startswith("pkg/tool/"):
            os.chmod(out, mode or 0o755)
PY
  mv "$dst.tmp" "$dst"
  rm -f "$zip"
  go_ok "$dst/bin/go" && echo "$dst/bin/go"
}

stamp() { echo "$BIN_DIR/.$1.version"; }

present() { # name module@version
  [ -x "$BIN_DIR/$1" ] && [ "$(cat "$(stamp "$1")" 2>/dev/null)" = "$2" ]
}

case "${1:-install}" in
  bin)
    echo "$BIN_DIR"
    ;;
  check)
    rc=0
    for t in "${TOOLS[@]}"; do
      present "${t%%|*}" "${t#*|}" || { echo "missing tool: ${t#*|}" >&2; rc=1; }
    done
    exit $rc
    ;;
  install)
    mkdir -p "$BIN_DIR"
    for t in "${TOOLS[@]}"; do
      name=${t%%|*} mod=${t#*|}
      present "$name" "$mod" && continue
      [ -n "${GO:-}" ] || GO=$(find_go) || { echo "tools: no Go >= 1.21 and cannot fetch one" >&2; exit 1; }
      echo "tools: $GO install $mod" >&2
      # A private GOPATH under the cache keeps the module cache out of the
      # source tree and survives between runs.
      GOBIN=$BIN_DIR GOPATH=${GOPATH:-$CACHE_DIR/gopath} GOFLAGS=-modcacherw \
        GOTOOLCHAIN=auto CGO_ENABLED=0 "$GO" install "$mod" >&2
      echo "$mod" > "$(stamp "$name")"
    done
    ;;
  *)
    echo "usage: $0 install|check|bin" >&2
    exit 2
    ;;
esac
