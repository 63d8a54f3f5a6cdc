#!/usr/bin/env bash
# The main job on a fresh machine: set up, then generate a completion with the engine.
# Until the bundled model (models/tiny-moe) lands, it uses a random-weight Mixtral-shaped checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
MODEL=${MODEL:-build/models/random-mixtral}
if [ ! -f "$MODEL/config.json" ]; then
  build/bin/moe-make-checkpoint --out "$MODEL" --model_type mixtral --layers 4 --hidden 256 --heads 8 --kv_heads 2 \
    --experts 8 --top_k 2 --expert_ffn 512 --vocab 512 --dtype bf16
fi
build/bin/moe-generate --model "$MODEL" --prompt "${PROMPT:-Add 123 and 456 to get}" --max-tokens "${MAX_TOKENS:-24}"
