#!/usr/bin/env bash
# Encoding speed on one thread, ours against HF tokenizers (npm `tokenizers` 0.23.2): a 30k
# byte-level BPE that HF trains on the Debian fortunes corpus, then the whole corpus (about
# 2.5 MB) encoded as one string and line by line, by both engines in turn, ROUNDS times (each
# run gives its first pass, which starts with empty word caches, and the best and mean of 3).
# Ratios are taken within a round: timings on shared machines drift from minute to minute.
#   bench/tokenizer/bench.sh [ROUNDS]
# Environment: BUILD_DIR (default build/cpu; tokenizer_bench is built there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=${1:-3}
build_dir=${BUILD_DIR:-$root/build/cpu}
work=$here/work
source "$here/common.sh"
prepare_inputs "$build_dir" "$work"
tok=$trained_tokenizer

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; commit $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
echo "corpus: $corpus ($(wc -c < "$corpus") bytes); tokenizer: $tok"
echo "HF:   RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node $here/hf_speed.js TOKENIZER FILE MODE 3"
echo "ours: $bench time TOKENIZER FILE MODE 3"
results=$work/bench-results.jsonl
: > "$results"
for round in $(seq "$rounds"); do
  for mode in whole lines; do
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node "$here/hf_speed.js" "$tok" "$corpus" "$mode" 3 |
      sed "s/^{/{\"round\": $round, /" | tee -a "$results"
    "$bench" time "$tok" "$corpus" "$mode" 3 | sed "s/^{/{\"round\": $round, /" | tee -a "$results"
  done
done

node - "$results" <<'EOF'
const lines = require('fs').readFileSync(process.argv[2], 'utf8').trim().split('\n').map(JSON.parse);
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
console.log('\nmedians over rounds (ratios taken within each round); first = first pass, empty caches');
console.log('mode   HF MB/s best  ours MB/s best  ours/HF best  ours/HF first');
for (const mode of ['whole', 'lines']) {
  const hf = lines.filter((l) => l.mode === mode && l.engine !== 'mambacpp');
  const ours = lines.filter((l) => l.mode === mode && l.engine === 'mambacpp');
  const ratio = (key) => median(hf.map((h) => ours.find((o) => o.round === h.round)[key] / h[key]));
  const tokensAgree = hf.every((h) => ours.every((o) => o.tokens === h.tokens));
  console.log(`${mode.padEnd(6)} ${median(hf.map((l) => l.best_mb_s)).toFixed(2).padStart(12)}  ` +
    `${median(ours.map((l) => l.best_mb_s)).toFixed(2).padStart(14)}  ${ratio('best_mb_s').toFixed(1).padStart(11)}x` +
    `  ${ratio('first_mb_s').toFixed(1).padStart(12)}x  token counts ${tokensAgree ? 'equal' : 'DIFFER'}`);
}
EOF
