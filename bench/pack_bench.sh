#!/usr/bin/env bash
# Packed versus padded batches on a corpus of mixed lengths: the Debian fortunes, one fortune per
# document (the files split at their "%" lines; `prepare` ends each document with <|endoftext|>).
# Trains the same model shape for the same steps with `train --pack` (rows of documents back to
# back) and `train --pad` (one document per row, padded to the batch's longest), and prints the
# throughput of REAL targets (padding and document ends excluded; metrics.csv's tokens column) of
# each, and their ratio. Rounds alternate the two modes; each mode's best round is reported.
#
#   bench/pack_bench.sh                 MAMBACPP=build/cpu/mambacpp STEPS=40 ROUNDS=2 THREADS=$(nproc)
# The prepared data stays in $WORK/data (default runs/pack-bench) for later runs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cli=${MAMBACPP:-$root/build/cpu/mambacpp}
work=${WORK:-$root/runs/pack-bench}
steps=${STEPS:-40}
rounds=${ROUNDS:-2}
threads=${THREADS:-$(nproc)}
shape=(--d-model 128 --n-layer 2 --d-state 16 --batch 8 --seq-len 256)
[[ -x $cli ]] || { echo "no mambacpp at $cli (build it, or set MAMBACPP)" >&2; exit 1; }

data=$work/data
if [[ ! -f $data/train.tokens ]]; then
  rm -rf "$work/fortunes"
  mkdir -p "$work/fortunes"
  python3 - "$work/fortunes" <<'EOF'
import os, sys
out = sys.argv[1]
root = "/usr/share/games/fortunes"
n = 0
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if name.endswith((".dat", ".u8")) or not os.path.isfile(path):
        continue
    text = open(path, encoding="utf-8", errors="replace").read()
    for fortune in text.split("\n%\n"):
        fortune = fortune.strip("%\n")
        if fortune.strip():
            with open(os.path.join(out, "%05d" % n), "w", encoding="utf-8") as f:
                f.write(fortune + "\n")
            n += 1
print("%d fortunes" % n, file=sys.stderr)
EOF
  "$cli" prepare --input "$work"/fortunes/* --out "$data" --train-tokenizer 4096 --val-fraction 0 --threads "$threads"
fi

# Real targets per second over the steps after the first 3 (arena sizing, page faults): sum of
# the steps' real targets over the sum of their times (each row: targets / tok_per_s seconds).
throughput() {
  python3 - "$1/metrics.csv" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["train_loss"]]
tokens = [int(r["tokens"]) for r in rows]
steps = [(t - p, float(r["tok_per_s"])) for r, t, p in zip(rows, tokens, [0] + tokens[:-1])]
timed = steps[3:]
seconds = sum(n / rate for n, rate in timed)
print("%.0f %.1f %.4f" % (sum(n for n, _ in timed) / seconds, tokens[-1] / len(rows), float(rows[-1]["train_loss"])))
EOF
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $threads threads; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown); model: ${shape[*]}, $steps steps"
declare -A best best_line
for ((round = 1; round <= rounds; round++)); do
  for mode in pack pad; do
    run=$work/run-$mode
    rm -rf "$run"
    echo "+ $cli train --data $data --out $run --$mode ${shape[*]} --steps $steps --lr 3e-3 --warmup 5 --eval-every 0 --save-every 0 --threads $threads"
    "$cli" train --data "$data" --out "$run" "--$mode" "${shape[@]}" --steps "$steps" --lr 3e-3 --warmup 5 \
      --eval-every 0 --save-every 0 --threads "$threads" >/dev/null 2>&1
    read -r rate per_step loss < <(throughput "$run")
    echo "  round $round --$mode: $rate real tokens/s, $per_step real tokens per step (of $((8 * 256)) slots), final train loss $loss"
    if [[ -z ${best[$mode]:-} ]] || (( ${rate%.*} > ${best[$mode]%.*} )); then
      best[$mode]=$rate
      best_line[$mode]="$rate real tokens/s ($per_step real tokens per step)"
    fi
  done
done
echo "packed: ${best_line[pack]}"
echo "padded: ${best_line[pad]}"
python3 -c "import sys; print('packed / padded: %.2fx' % (float(sys.argv[1]) / float(sys.argv[2])))" "${best[pack]}" "${best[pad]}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
