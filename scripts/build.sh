#!/usr/bin/env bash
# Usage: scripts/build.sh [preset] [cmake --build options...]
# Installs what is missing (scripts/setup.sh), configures the CMake preset (default: cpu) if it
# is not configured yet, and builds it. The CLI is then at build/<preset>/mambacpp.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
preset=${1:-cpu}
[ $# -gt 0 ] && shift

"$root/scripts/setup.sh"
cd "$root"
if [ ! -f "build/$preset/CMakeCache.txt" ] || [ ! -f "build/$preset/build.ninja" ]; then
  cmake --preset "$preset"
fi
cmake --build --preset "$preset" "$@"
[ -x "build/$preset/mambacpp" ] && echo "build: build/$preset/mambacpp"
exit 0
