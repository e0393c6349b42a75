#!/usr/bin/env bash
# Stateful training across windows versus full-length training, on long documents. Three runs of
# the same model (d_model 64, 2 layers, d_state 16) see the same number of training tokens:
#   full      --pack --seq-len LENGTH: rows of LENGTH ids (the gradient memory of LENGTH ids)
#   stateful  --stateful --seq-len WINDOW: each row walks its documents in consecutive windows,
#             starting from the previous window's final states (truncated BPTT)
#   window    --pack --seq-len WINDOW: the same short windows without carried states
# Each is evaluated with the full-length forward (no gradient memory) on held-out documents, and
# the trainer's peak RSS is reported (getrusage, as /usr/bin/time -v).
#
# TASK=code (default): the Python standard library's source files (/usr/lib/python3*/, those of
#   8 KB or more: documents of thousands of tokens) as documents, every 10th held out; a 4096-token
#   BPE trained on the rest. Measure: the held-out loss in windows of LENGTH (`mambacpp eval
#   --seq-len LENGTH`) and of WINDOW, so that the gain from context beyond the window shows.
# TASK=recall: bench/long_range_data.py's synthetic key recall (QUERIES per training document);
#   measure: bench/recall_eval.py's accuracy on the key recalled at the end of held-out documents.
#
#   bench/stateful_bench.sh   MAMBACPP=build/cpu/mambacpp TASK=code LENGTH=2048 WINDOW=256 BATCH=4
#                             STEPS=200 (of the full run; the windowed runs take LENGTH/WINDOW times
#                             as many) LR=3e-3 THREADS=$(nproc) RUNS="full stateful window"
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cli=${MAMBACPP:-$root/build/cpu/mambacpp}
task=${TASK:-code}
work=${WORK:-$root/runs/stateful-bench-$task}
length=${LENGTH:-2048}
window=${WINDOW:-256}
batch=${BATCH:-4}
steps=${STEPS:-200}
lr=${LR:-3e-3}
threads=${THREADS:-$(nproc)}
runs=${RUNS:-full stateful window}
queries=${QUERIES:-1}
[[ -x $cli ]] || { echo "no mambacpp at $cli (build it, or set MAMBACPP)" >&2; exit 1; }
(( length % window == 0 )) || { echo "LENGTH must be a multiple of WINDOW" >&2; exit 1; }
ratio=$((length / window))
data=$work/data
shape=(--d-model 64 --n-layer 2 --d-state 16)
mkdir -p "$work"

case $task in
  code)
    if [[ ! -f $data/train.tokens ]]; then
      mapfile -t files < <(find /usr/lib/python3*/ -maxdepth 1 -name '*.py' -size +8k | sort)
      train_files=() heldout_files=()
      for i in "${!files[@]}"; do
        if (( i % 10 == 9 )); then heldout_files+=("${files[i]}"); else train_files+=("${files[i]}"); fi
      done
      "$cli" prepare --input "${train_files[@]}" --out "$data" --train-tokenizer 4096 --val-fraction 0 --threads "$threads"
      "$cli" prepare --input "${heldout_files[@]}" --out "$work/heldout" --tokenizer "$data/tokenizer.json" \
        --val-fraction 0 --threads "$threads"
    fi
    model=("${shape[@]}")
    ;;
  recall)
    docs=$((steps * batch + 64))  # every document seen about once by the full run
    [[ -f $data/train.tokens ]] ||
      python3 "$root/bench/long_range_data.py" "$data" --length "$length" --train-docs "$docs" --queries "$queries"
    model=(--config "$data/config.json")
    ;;
  *) echo "TASK must be code or recall" >&2; exit 1 ;;
esac

# The held-out measure of a checkpoint, one line.
measure() {
  if [[ $task == recall ]]; then
    python3 "$root/bench/recall_eval.py" "$cli" "$1" "$data" --threads "$threads"
  else
    local long short
    long=$("$cli" eval --model "$1" --data "$work/heldout/train.tokens" --seq-len "$length" --batch 1 --threads "$threads" | sed -n 's/^loss //p')
    short=$("$cli" eval --model "$1" --data "$work/heldout/train.tokens" --seq-len "$window" --batch 8 --threads "$threads" | sed -n 's/^loss //p')
    echo "held-out loss in windows of $length: $long, of $window: $short"
  fi
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $threads threads; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown); task $task; ${shape[*]};" \
  "$((steps * batch * length)) training tokens per run"
for name in $runs; do
  case $name in
    full) flags=(--pack --seq-len "$length" --steps "$steps" --warmup $((steps / 10))) ;;
    stateful) flags=(--stateful --seq-len "$window" --steps $((steps * ratio)) --warmup $((steps * ratio / 10))) ;;
    window) flags=(--pack --seq-len "$window" --steps $((steps * ratio)) --warmup $((steps * ratio / 10))) ;;
    *) echo "unknown run $name" >&2; exit 1 ;;
  esac
  run=$work/run-$name
  rm -rf "$run"
  cmd=("$cli" train --data "$data" --out "$run" "${model[@]}" --batch "$batch" "${flags[@]}" --lr "$lr"
       --eval-every 0 --save-every 0 --threads "$threads")
  echo "+ ${cmd[*]}"
  # The trainer's peak RSS (getrusage of the finished child) and wall time.
  read -r rss wall < <(python3 - "$run.log" "${cmd[@]}" <<'PY'
import resource, subprocess, sys, time
start = time.time()
with open(sys.argv[1], "w") as log:
    code = subprocess.run(sys.argv[2:], stdout=log, stderr=log).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if code == 0 else -1, "%.0f" % (time.time() - start))
PY
)
  (( rss > 0 )) || { tail "$run.log"; exit 1; }
  loss=$(tail -1 "$run/metrics.csv" | cut -d, -f3)
  echo "  $name: peak RSS $((rss / 1024)) MiB, ${wall} s, last train loss $loss; $(measure "$run/checkpoints/$(cat "$run/checkpoints/latest")")"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
