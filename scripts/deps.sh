#!/usr/bin/env bash
# Installs (or checks for) every Debian package the project needs: build
# libraries, Redis, Java + Maven for the Apache Kafka broker, and test tools.
# (helm and kube-score are Go modules: scripts/tools.sh builds them into a cache.)
#
#   scripts/deps.sh check     exit 0 when everything is present
#   scripts/deps.sh install   apt-get install what is missing (idempotent)
set -euo pipefail

PACKAGES=(
  build-essential pkg-config git python3
  librdkafka-dev libmicrohttpd-dev libhiredis-dev libssl-dev libcjson-dev
  libcurl4-openssl-dev libyaml-dev libcmocka-dev
  redis-server redis-tools
  default-jdk-headless maven
  cppcheck clang clang-format libclang-rt-14-dev
  prometheus kcat wrk curl valgrind
  deck docker-compose
  python3-pytest python3-yaml python3-confluent-kafka python3-jsonschema python3-cryptography python3-redis
)

missing() {
  local p out=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  # java may come from another JDK package than default-jdk-headless
  if [[ " ${out[*]} " == *" default-jdk-headless "* ]] && command -v java >/dev/null &&
     java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then
    out=("${out[@]/default-jdk-headless}")
  fi
  printf '%s\n' "${out[@]}" | grep -v '^$' || true
}

case "${1:-check}" in
  check)
    m=$(missing)
    if [ -n "$m" ]; then
      echo "missing packages: $(echo $m)" >&2
      exit 1
    fi
    ;;
  install)
    m=$(missing)
    if [ -z "$m" ]; then
      echo "deps: everything is installed"
      exit 0
    fi
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "deps: installing $(echo $m)"
    $SUDO apt-get update -qq
    # prometheus is only needed for promtool: do not let its service start.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $m
    ;;
  *)
    echo "usage: $0 check|install" >&2
    exit 2
    ;;
esac
