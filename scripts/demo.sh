#!/usr/bin/env bash
# Train the demo policy (synthetic task, tiny model, local Ray: ~10 minutes on 2 CPU cores), then
# evaluate it closed loop against the random and constant baselines. Sets up .venv first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
vla-train
vla-evaluate
