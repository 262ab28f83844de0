#!/usr/bin/env bash
# Checks a GPU machine end to end: what the worker detects (NVML), then a task that asks for one
# GPU, run by a throwaway local pool and a local-executor worker, printing what the GPU library
# sees from inside the task. Needs the hivemind-* commands on PATH and a Python with torch or
# nvidia-smi for the task. Everything lives in a temporary folder and stops at the end.
set -euo pipefail
work=$(mktemp -d /tmp/hivemind-gpu-check.XXXXXX)
export HIVEMIND_CONFIG_DIR="$work/config"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== machine facts (python -m hivemind_worker.facts)"
python3 -m hivemind_worker.facts

echo "== starting a pool and a local-executor worker"
hivemind-nodepool serve --listen 127.0.0.1:0 --data-dir "$work/pool" >"$work/pool.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [[ -f $work/pool/pool.json ]] && break; sleep 0.2; done
address=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['address'])" "$work/pool/pool.json")
echo "gpu-check-password" | hivemind-nodepool user add gpucheck --password-stdin --data-dir "$work/pool"
echo "gpu-check-password" | hivemind login --pool "$address" --user gpucheck --password-stdin
token=$(hivemind-nodepool join-token create --data-dir "$work/pool" | head -n 1)
hivemind-worker run --pool "$address" --join-token-file - --executor local \
  --state-dir "$work/worker" >"$work/worker.log" 2>&1 <<<"$token" &
pids+=($!)
sleep 3
hivemind workers

mkdir -p "$work/task"
python3 - "$work/task/gpu_check.ipynb" <<'PY'
import json, sys
source = '''import shutil, subprocess
try:
    import torch
    print("torch", torch.__version__, "CUDA available:", torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print("device:", props.name, f"{props.total_memory / 2**30:.1f} GiB,", props.multi_processor_count, "SMs")
        a = torch.randn(4096, 4096, device="cuda")
        print("4096x4096 matmul checksum:", float((a @ a).float().abs().sum()))
except ImportError:
    print("no torch in the task's environment")
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
'''
notebook = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                       "source": source}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}
json.dump(notebook, open(sys.argv[1], "w"))
PY
echo "== a task asking for one GPU"
status=0
hivemind submit "$work/task/gpu_check.ipynb" --gpus "${GPU_CHECK_GPUS:-1}" --memory 4G --timeout 5m --wait || status=$?
if [[ $status != 0 ]]; then
  echo "== the task did not succeed; worker log:"; tail -40 "$work/worker.log"
fi
exit $status
