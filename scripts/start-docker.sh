#!/usr/bin/env bash
# Starts a Docker engine when none answers (these machines ship only the client), then waits for it.
set -euo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  echo "No Docker engine answers and only root can start one here. Start Docker, or use --executor local." >&2
  exit 1
fi
if ! command -v dockerd >/dev/null; then
  echo "dockerd is not installed: run scripts/setup.sh as root (it installs docker.io)." >&2
  exit 1
fi
echo "==> starting dockerd (log: /var/log/hivemind-dockerd.log)"
nohup dockerd --iptables=false --bridge=none --storage-driver=overlay2 \
  >/var/log/hivemind-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "==> Docker engine is up"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not come up within 60 s; see /var/log/hivemind-dockerd.log" >&2
tail -20 /var/log/hivemind-dockerd.log >&2 || true
exit 1
