#!/usr/bin/env bash
# Differential test of our tokenizer against HF tokenizers (npm `tokenizers` 0.23.2, the version
# that made tests/data/tokenizer): the same texts through both, ids compared text by text, on
# the fixture, on variants of it that exercise every supported component, and on a 30k BPE
# trained on the corpus. Also compares the Unicode character classes on every code point.
#   bench/tokenizer/differential.sh [SEED] [RANDOM_TEXTS]
# Environment: BUILD_DIR (default build/cpu; tokenizer_bench is built there).
# Needs node + npm, and the Debian package `fortunes` (/usr/share/games/fortunes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seed=${1:-1}
random_texts=${2:-20000}
build_dir=${BUILD_DIR:-$root/build/cpu}
work=$here/work
source "$here/common.sh"
prepare_inputs "$build_dir" "$work"
trained=$trained_tokenizer

echo "== texts: corpus lines and fortunes of $corpus, $random_texts random strings (seed $seed)"
node "$here/make_texts.js" "$seed" "$random_texts" "$corpus" > "$work/texts.jsonl"
texts=$(wc -l < "$work/texts.jsonl")
echo "$texts texts"

node "$here/make_variants.js" "$root/tests/data/tokenizer/tokenizer.json" "$work/variants" > "$work/variants.txt"
echo "fortunes-30k" >> "$work/variants.txt"
cp "$trained" "$work/variants/fortunes-30k.json"

failures=0
while read -r name roundtrip; do
  tok=$work/variants/$name.json
  node "$here/oracle.js" "$tok" "$work/texts.jsonl" > "$work/hf-$name.txt"
  check=()
  [[ $roundtrip == roundtrip ]] && check=(--check-roundtrip)
  rc=0
  "$bench" ids "$tok" "$work/texts.jsonl" "${check[@]}" > "$work/ours-$name.txt" 2> "$work/stderr-$name.txt" || rc=$?
  case $rc in
    0) roundtrip_status=ok ;;
    3) roundtrip_status="FAILED ($(wc -l < "$work/stderr-$name.txt") texts)" ;;
    *) echo "$name: tokenizer_bench failed: $(head -3 "$work/stderr-$name.txt")"; failures=$((failures + 1)); continue ;;
  esac
  [[ $roundtrip == roundtrip ]] || roundtrip_status="not expected"
  if [[ $(wc -l < "$work/hf-$name.txt") != "$texts" || $(wc -l < "$work/ours-$name.txt") != "$texts" ]]; then
    echo "$name: HF or ours did not give one line of ids per text"
    failures=$((failures + 1))
    continue
  fi
  mismatched=$(awk 'NR == FNR { hf[FNR] = $0; next } hf[FNR] != $0 { print FNR }' \
    "$work/hf-$name.txt" "$work/ours-$name.txt")
  count=$(printf '%s' "$mismatched" | grep -c . || true)
  printf '%-18s texts %d  id mismatches %d  round trip %s\n' "$name" "$texts" "$count" "$roundtrip_status"
  for line in $(printf '%s\n' "$mismatched" | head -3); do
    echo "  text $line: $(sed -n "${line}p" "$work/texts.jsonl" | cut -c1-200)"
    echo "    HF   $(sed -n "${line}p" "$work/hf-$name.txt" | cut -c1-200)"
    echo "    ours $(sed -n "${line}p" "$work/ours-$name.txt" | cut -c1-200)"
  done
  if [[ $count != 0 || $roundtrip_status == FAILED* ]]; then failures=$((failures + 1)); fi
done < "$work/variants.txt"

echo "== character classes of the GPT-2 regex, every code point"
"$bench" classes "$work/classes.bin"
node "$here/unicode_classes.js" "$work/classes.bin" | tail -1

if [[ $failures != 0 ]]; then
  echo "FAILED: $failures tokenizer variants differ from HF"
  exit 1
fi
echo "all variants agree with HF"
