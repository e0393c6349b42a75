#!/usr/bin/env bash
# The main job, from a fresh Debian 12 checkout: install what is missing, build the `cpu` preset,
# then generate from the small checkpoint in tests/data (a randomly initialised Mamba whose
# tokens match Hugging Face transformers exactly) and measure real speed on a random model of
# the mamba-130m shape. (Once training lands, this trains the small model first.)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

"$root/scripts/build.sh" cpu
cli=build/cpu/mambacpp
model=tests/data/hf-tiny-mamba
tokenizer=tests/data/tokenizer/tokenizer.json
threads=$(nproc)  # for the 130m bench; the tiny model is fastest on one thread

# step TITLE COMMAND...: prints the title and the command (shell-quoted), then runs it.
step() {
  printf '\n\033[1m== %s\033[0m\n$' "$1"
  printf ' %q' "${@:2}"
  printf '\n'
  "${@:2}"
}

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
