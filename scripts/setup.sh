#!/usr/bin/env bash
# Installs the Debian packages mambacpp needs (Debian 12 "bookworm"), idempotently: each package
# is checked with dpkg-query, and `apt-get update` + `apt-get install` run only when something is
# missing. Works as root, or through sudo for another user.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libopenblas-openmp-dev   # GEMM (OpenBLAS built with OpenMP, so it shares our thread pool)
  nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev libzip-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev   # libFuzzer and the sanitizer runtimes for the `fuzz` preset
  libomp-14-dev                 # OpenMP for clang-14 (gcc uses its own libgomp)
  fortunes                      # the demo corpus (/usr/share/games/fortunes), also used by tests
  libcpp-httplib-dev            # HTTP for `mambacpp serve`
  libopenmpi-dev openmpi-bin    # data-parallel training (`train --distributed` under mpirun)
  chromium chromium-driver      # headless browser + WebDriver for the serve playground test
)

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup: missing packages (${missing[*]}); run this script as root or install sudo" >&2
  exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

still_missing=()
for p in "${missing[@]}"; do
  installed "$p" || still_missing+=("$p")
done
if [ ${#still_missing[@]} -ne 0 ]; then
  echo "setup: could not install ${still_missing[*]}" >&2
  exit 1
fi
echo "setup: done"
