# Shared by bench/serve_load.sh and bench/serve_peer.sh (sourced, not run): the random
# mamba-130m checkpoint, free ports, and a server process started, awaited and stopped.
# Expects $root (the repository) and $work (the script's work folder); defines log() from $log_tag.

log() { printf '[%s %s] %s\n' "$log_tag" "$(date +%H:%M:%S)" "$*" >&2; }

# serve_checkpoint PEER -> $model (HF folder of the random mamba-130m shape, seed 0) and $vocab.
# Reuses bench/peer_bench.sh's checkpoint when there is one (same seed, same weights). The model
# has no tokenizer: the load uses token-id prompts.
serve_checkpoint() {
  local peer=$1 shared=$root/build/peer-bench/m130
  model=$work/m130
  if [ ! -f "$model/model.safetensors" ]; then
    mkdir -p "$model"
    if [ -f "$shared/model.safetensors" ]; then
      ln -sf "$shared/config.json" "$shared/model.safetensors" "$model/"
    else
      [ -x "$peer" ] || { echo "$log_tag: no peer tool at $peer (set PEER)" >&2; exit 1; }
      log "random mamba-130m checkpoint"
      "$peer" random-130m "$model" >&2
    fi
  fi
  vocab=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$model/config.json")
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_server NAME PORT COMMAND... -> $server (pid); output in $work/NAME.log. Returns once GET
# /health answers, exits the script if the server dies or stays unhealthy for a minute.
server=
start_server() {
  local name=$1 port=$2
  shift 2
  "$@" >"$work/$name.log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/$name.log" >&2
  echo "$log_tag: $name did not become healthy on port $port" >&2
  exit 1
}

stop_server() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  server=
}
