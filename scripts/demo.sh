#!/usr/bin/env bash
# Sets everything up and runs the main job: a local pool (SQLite in .hivemind/), a worker on this
# machine (Docker when an engine answers, else the local executor, said plainly) and the quickstart
# notebook, whose %%hivemind cells run on the pool, executed headlessly; prints what came back.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ -z ${HIVEMIND_NO_DOCKER:-} ]]; then
  if scripts/start-docker.sh; then
    .venv/bin/hivemind-worker image build --bootstrap --if-missing \
      || echo "==> the runtime image could not be built; the demo falls back to the local executor" >&2
  else
    echo "==> no Docker engine: the demo falls back to the local executor" >&2
  fi
fi
export HIVEMIND_CONFIG_DIR="$PWD/.hivemind/demo/config"
exec .venv/bin/hivemind up --data-dir .hivemind/demo --port 0 --run notebooks/quickstart.ipynb "$@"
