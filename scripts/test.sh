#!/usr/bin/env bash
# Everything CI checks, in order:
#   1. installs what is missing (scripts/setup.sh);
#   2. builds the `cpu` preset (Release) and runs every test with ctest;
#   3. builds the `asan` preset (Debug, AddressSanitizer + UBSan, leak checks on) and runs them again;
#   4. builds the `fuzz` preset (clang-14 libFuzzer) and runs each build/fuzz/*_fuzz target for
#      MAMBACPP_FUZZ_SECONDS (default 30) from a temporary copy of its seed corpus fuzz/corpus/<name>/.
# Each build, test program and fuzz target counts as one check. Prints a summary with the time of
# each phase and ends with the line "N passed, N failed"; exits non-zero if anything failed.
# Takes about 11 minutes on an idle 2-core machine from a fresh checkout (2026-11-25: 655 s wall,
# 1247 s CPU; the three builds are 80% of it, the fuzz runs 94 s, the tests 39 s).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
fuzz_seconds=${MAMBACPP_FUZZ_SECONDS:-30}
jobs=$(nproc)

passed=0
failed=0
results=()  # "PASS|FAIL  what  (detail)"
phases=()   # "phase  seconds"

record() {  # record PASS|FAIL what [detail]
  if [ "$1" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  results+=("$(printf '%-4s  %-34s %s' "$1" "$2" "${3:-}")")
}

# cpu_now = CPU seconds (user + system) of every finished child process so far, from bash's
# `times`, which must run in this shell: a subshell's counters start at zero.
times_file=$(mktemp)
trap 'rm -f "$times_file"' EXIT
cpu_now=0
read_cpu() {
  times >"$times_file"
  cpu_now=$(tail -n 1 "$times_file" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); t += p[1] * 60 + p[2] } printf "%d", t }')
}

phase_start=0 phase_cpu=0
begin_phase() {
  printf '\n===== %s =====\n' "$1"
  phase_start=$SECONDS
  read_cpu
  phase_cpu=$cpu_now
}
end_phase() {
  read_cpu
  phases+=("$(printf '%-22s %5d s wall %6d s cpu' "$1" $((SECONDS - phase_start)) $((cpu_now - phase_cpu)))")
}

# build PRESET: one check, named after the preset; returns non-zero if the build failed.
build() {
  local rc=0
  begin_phase "build $1"
  scripts/build.sh "$1" || rc=$?
  if [ $rc -eq 0 ]; then record PASS "build $1"; else record FAIL "build $1"; fi
  end_phase "build $1"
  return $rc
}

# run_ctest PRESET: one check per test program, read from ctest's closing lines.
run_ctest() {
  local preset=$1 log
  begin_phase "test $preset"
  log=$(mktemp)
  ctest --preset "$preset" -j "$jobs" 2>&1 | tee "$log"
  local total failures
  total=$(sed -n 's/.*tests passed, [0-9]* tests\{0,1\} failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)
  failures=$(sed -n 's/.*tests passed, \([0-9]*\) tests\{0,1\} failed out of.*/\1/p' "$log" | tail -1)
  if [ -z "$total" ] || [ "$total" -eq 0 ]; then
    record FAIL "tests $preset" "(no tests found)"
  else
    local t
    while read -r t; do record PASS "$preset: $t"; done < <(
      sed -n 's/^ *[0-9]*\/[0-9]* Test *#[0-9]*: \([^ ]*\) \.*  *Passed.*/\1/p' "$log")
    while read -r t; do [ -n "$t" ] && record FAIL "$preset: $t"; done < <(
      sed -n '/tests failed out of/,$ s/^[[:space:]]*[0-9]* - \([^ ]*\) (.*/\1/p' "$log")
    # a failure ctest counted but the lines above did not name still counts
    local named=0 r
    for r in "${results[@]}"; do case $r in "FAIL  $preset: "*) named=$((named + 1)) ;; esac; done
    while [ "$named" -lt "$failures" ]; do record FAIL "$preset: (unnamed test)"; named=$((named + 1)); done
  fi
  rm -f "$log"
  end_phase "test $preset"
}

# fuzz_one BIN WORK: runs one target from WORK/corpus, writing WORK/log and WORK/rc.
fuzz_one() {
  local bin=$1 work=$2 name args rc=0
  name=$(basename "$bin" _fuzz)
  args=(-max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$work/")
  [ -f "fuzz/$name.dict" ] && args+=(-dict="fuzz/$name.dict")
  "$bin" "${args[@]}" "$work/corpus" >"$work/log" 2>&1 || rc=$?
  echo "$rc" >"$work/rc"
}

# run_fuzz: each build/fuzz/*_fuzz target for fuzz_seconds from a copy of its seed corpus, as
# many at once as there are cores (each fuzzer uses one).
run_fuzz() {
  begin_phase "fuzz"
  local targets=() works=() bin i
  for bin in build/fuzz/*_fuzz; do [ -x "$bin" ] && targets+=("$bin"); done
  [ ${#targets[@]} -eq 0 ] && echo "no fuzz targets (fuzz/*_fuzz.cpp): nothing to run"
  for bin in "${targets[@]}"; do
    local name work
    name=$(basename "$bin" _fuzz)
    work=$(mktemp -d)
    works+=("$work")
    mkdir -p "$work/corpus"
    if [ -d "fuzz/corpus/$name" ]; then
      cp -r "fuzz/corpus/$name/." "$work/corpus/"
    else
      echo "warning: no seed corpus fuzz/corpus/$name/"
    fi
    echo "--- $name: $(find "$work/corpus" -type f | wc -l) seed inputs, ${fuzz_seconds} s"
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    fuzz_one "$bin" "$work" &
  done
  wait
  for i in "${!targets[@]}"; do
    local name work rc
    name=$(basename "${targets[$i]}" _fuzz)
    work=${works[$i]}
    rc=$(cat "$work/rc" 2>/dev/null || echo 1)
    echo "--- $name: exit $rc"
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$work/log" || true
    if [ "$rc" -eq 0 ]; then
      record PASS "fuzz $name" "($(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log") runs)"
    else
      local keep="build/fuzz/failures/$name"
      rm -rf "$keep"
      mkdir -p "$keep"
      cp "$work/log" "$keep/log.txt"
      find "$work" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) \
        -exec cp {} "$keep/" \;
      tail -n 40 "$work/log"
      record FAIL "fuzz $name" "(exit $rc; log and inputs in $keep/)"
    fi
    rm -rf "$work"
  done
  end_phase "fuzz"
}

total_start=$SECONDS
begin_phase "setup"
if ! scripts/setup.sh; then
  echo "setup failed: cannot continue"
  echo "0 passed, 1 failed"
  exit 1
fi
end_phase "setup"

build cpu && run_ctest cpu

# Leak checks on (root is fine). tests/lsan.supp lists known leaks of system libraries, if any.
export ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
[ -f tests/lsan.supp ] && export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
build asan && run_ctest asan

build fuzz && run_fuzz

printf '\n===== summary =====\n'
printf '%s\n' "${results[@]}"
echo
printf '%s\n' "${phases[@]}"
read_cpu
printf '%-22s %5d s wall %6d s cpu  (%d cores)\n' "total" $((SECONDS - total_start)) "$cpu_now" "$jobs"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
