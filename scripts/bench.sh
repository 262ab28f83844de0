#!/usr/bin/env bash
# Runs every benchmark, one after another; each prints its figures as ratios against a baseline
# measured side by side in the same run. `scripts/bench.sh --quick` shrinks the pool's workloads.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
if [[ -z ${HIVEMIND_NO_DOCKER:-} ]]; then
  scripts/start-docker.sh
  .venv/bin/hivemind-worker image build --bootstrap --if-missing
fi
quick=()
[[ ${1:-} == --quick ]] && quick=(--quick)
for bench in bench_pool bench_feed; do
  echo "==> benchmarks/$bench.py"
  .venv/bin/python "benchmarks/$bench.py" "${quick[@]}"
done
echo "==> benchmarks/bench_worker.py"
.venv/bin/python benchmarks/bench_worker.py
echo "==> benchmarks/bench_jupyter.py"
.venv/bin/python benchmarks/bench_jupyter.py
echo "==> benchmarks/bench_environments.py"
.venv/bin/python benchmarks/bench_environments.py
