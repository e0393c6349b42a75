#!/usr/bin/env bash
# The main job, from a fresh Debian 12 checkout: install what is missing, build the `cpu` preset,
# train a small Mamba (about 2.8 M parameters) on the Debian fortunes corpus with a byte-level BPE
# trained on it, print samples from it, then show that a Hugging Face checkpoint generates the
# same tokens as transformers and measure speed on the mamba-130m shape.
# Training takes about 7 minutes on 2 cores; run it again and it goes on from the finished run
# (runs/demo) straight to the samples. DEMO_STEPS=N changes the length of a new run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

"$root/scripts/build.sh" cpu
cli=build/cpu/mambacpp
model=tests/data/hf-tiny-mamba
tokenizer=tests/data/tokenizer/tokenizer.json
threads=$(nproc)  # for training and the 130m bench; the tiny checkpoint is fastest on one thread

# step TITLE COMMAND...: prints the title and the command (shell-quoted), then runs it.
step() {
  printf '\n\033[1m== %s\033[0m\n$' "$1"
  printf ' %q' "${@:2}"
  printf '\n'
  "${@:2}"
}

# ---- Train on fortunes, then write some.
data=runs/demo-data
run=runs/demo
steps=${DEMO_STEPS:-1200}
mkdir -p runs
if [[ ! -f $data/train.tokens ]]; then
  mapfile -t corpus < <(find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
  step "Tokenize the fortunes corpus with a 4096-token byte-level BPE trained on it" \
    "$cli" prepare --input "${corpus[@]}" --out "$data" --train-tokenizer 4096
fi
if [[ -f $run/checkpoints/latest ]]; then
  step "Continue the demo run (a finished run has nothing left to do)" "$cli" train --out "$run" --resume
else
  step "Train: d_model 256, 4 layers, batch 8 x 256 tokens, $steps steps (progress bar; Ctrl-C saves, run again to go on)" \
    "$cli" train --data "$data" --out "$run" --d-model 256 --n-layer 4 --batch 8 --seq-len 256 \
    --steps "$steps" --lr 3e-3 --warmup 50 --eval-every 100 --eval-tokens 8192 --save-every 200 --threads "$threads"
fi
latest="$run/checkpoints/$(cat "$run/checkpoints/latest")"
for seed in 1 2 3; do
  step "A sample from the trained model (seed $seed)" \
    "$cli" generate --model "$latest" --prompt "The " --max-new-tokens 60 --temperature 0.8 --top-k 40 \
    --seed "$seed" --threads 1
  echo
done
printf '\nThe run: %s/metrics.csv, %s/loss.svg (train and val loss), checkpoints in %s/checkpoints\n' "$run" "$run" "$run"

# ---- A Hugging Face checkpoint: the same tokens as transformers.
step "The checkpoint: a tiny random MambaForCausalLM (transformers 5.17.0), 2 layers, vocab 512" \
  "$cli" info --model "$model"

# The tokenizer has 2000 tokens and the model only 512, so the prompt uses words whose ids fit.
prompt="I know you are not the one"
step "Prompt -> token ids (byte-level BPE, same ids as HF tokenizers)" \
  "$cli" tokenize --tokenizer "$tokenizer" --text "$prompt"

step "Greedy generation: these ids equal transformers' generate(do_sample=False)" \
  "$cli" generate --model "$model" --tokenizer "$tokenizer" --prompt "$prompt" \
  --temperature 0 --max-new-tokens 24 --print-ids --threads 1

step "Sampled generation, streamed as text (a random model writes gibberish; tokens/s on stderr)" \
  "$cli" generate --model "$model" --tokenizer "$tokenizer" --prompt "$prompt" \
  --temperature 0.9 --top-k 40 --seed 7 --max-new-tokens 48 --threads 1
echo

step "Real speed: random weights of the mamba-130m shape (129 M parameters), prompt 128, 32 new tokens" \
  "$cli" bench --shape 130m -p 128 -n 32 -r 2 -t "$threads"

printf '\nMore: %s --help, README.md, docs/PERFORMANCE.md\n' "$cli"
