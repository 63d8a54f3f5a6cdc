#!/usr/bin/env bash
# The main job on a fresh machine: set up, start a local cluster (coordinator + 2 workers on loopback)
# serving the bundled model, send it a real request through the gRPC client, and stop the cluster.
# Falls back to a random-weight Mixtral-shaped checkpoint when models/tiny-moe is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
MODEL=${MODEL:-models/tiny-moe}
PROMPT=${PROMPT:-add 123+456=}
if [ ! -f "$MODEL/config.json" ]; then
  MODEL=build/models/random-mixtral
  PROMPT=${PROMPT_RANDOM:-The quick brown fox}
  [ -f "$MODEL/config.json" ] || build/bin/moe-make-checkpoint --out "$MODEL" --model-type mixtral --layers 4 \
    --hidden 256 --heads 8 --kv-heads 2 --experts 8 --top-k 2 --expert-ffn 512 --vocab 512 --dtype bf16
fi
log=$(mktemp)
cluster/run-local --workers "${WORKERS:-2}" --model "$MODEL" --port "${PORT:-0}" >"$log" 2>&1 &
cluster_pid=$!
trap 'kill -TERM $cluster_pid 2>/dev/null; wait $cluster_pid 2>/dev/null || true; rm -f "$log"' EXIT  # the cluster exits 143 on TERM; set -e must not turn that into the demo's status
for _ in $(seq 600); do  # up to 60 s for the cluster to come up
  grep -q "^listening on " "$log" && break
  kill -0 $cluster_pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
address=$(sed -n 's/^listening on //p' "$log")
[ -n "$address" ] || { echo "demo: the cluster did not start"; cat "$log"; exit 1; }
echo "cluster of ${WORKERS:-2} workers serving $MODEL on $address"
echo "prompt: $PROMPT"
printf 'completion: '
build/bin/moe-client --server "$address" --prompt "$PROMPT" --max-tokens "${MAX_TOKENS:-16}"
