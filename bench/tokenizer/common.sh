# Shared by differential.sh and bench.sh (sourced; $here is bench/tokenizer).

# HF tokenizers' node binding, installed next to these scripts (node_modules is git-ignored).
ensure_oracle() {
  if [[ ! -d $here/node_modules/tokenizers ]]; then
    (cd "$here" && npm install --no-save --no-audit --no-fund tokenizers@0.23.2 >&2)
  fi
}

# The Debian fortunes corpus (about 2.5 MB) as one file; prints its path.
fortunes_corpus() {
  local work=$1 dir=/usr/share/games/fortunes
  if [[ ! -d $dir ]]; then
    echo "no $dir: install the Debian package fortunes (apt-get install fortunes)" >&2
    exit 1
  fi
  if [[ ! -s $work/fortunes.txt ]]; then
    find "$dir" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort | xargs cat > "$work/fortunes.txt"
  fi
  echo "$work/fortunes.txt"
}

# Builds tokenizer_bench in the given build folder (configuring a Release build if needed);
# prints its path.
build_tokenizer_bench() {
  local build_dir=$1
  if [[ ! -f $build_dir/build.ninja ]]; then
    cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
  fi
  cmake --build "$build_dir" --target tokenizer_bench >&2
  echo "$build_dir/tokenizer_bench"
}

# A 30k byte-level BPE trained by HF tokenizers on the corpus (made once); prints its path.
trained_bpe() {
  local corpus=$1 work=$2
  if [[ ! -s $work/fortunes-30k.json ]]; then
    node "$here/train_bpe.js" "$corpus" "$work/fortunes-30k.json" >&2
  fi
  echo "$work/fortunes-30k.json"
}

# What both scripts start from, in $work: the oracle installed, the fortunes corpus, our
# tokenizer_bench built in $build_dir, and the 30k BPE HF trains on the corpus. Sets corpus,
# bench and trained_tokenizer.
prepare_inputs() {
  local build_dir=$1 work=$2
  mkdir -p "$work"
  ensure_oracle
  corpus=$(fortunes_corpus "$work")
  bench=$(build_tokenizer_bench "$build_dir")
  trained_tokenizer=$(trained_bpe "$corpus" "$work")
}
