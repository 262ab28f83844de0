#!/usr/bin/env bash
# Installs everything HiveMind needs on a fresh Debian machine into ./.venv (idempotent).
#   scripts/setup.sh            Python packages, the labextension build, system packages when root
# HIVEMIND_SKIP_APT=1 skips the system packages (Docker engine, debootstrap, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(docker.io debootstrap chromium)
if [[ $(id -u) == 0 && -z ${HIVEMIND_SKIP_APT:-} ]] && command -v apt-get >/dev/null; then
  missing=()
  for package in "${apt_packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "==> installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.hivemind-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || labextension/package.json -nt $stamp ]]; then
  echo "==> installing hivemind-jupyter and its development tools into .venv"
  # The install writes the panel's shared data (install.json) under share/jupyter/labextensions;
  # through the development link below it would land inside the build folder, so drop the link
  # first (it is made again further down).
  link=.venv/share/jupyter/labextensions/hivemind-jupyter
  if [[ -L $link ]]; then rm "$link"; fi
  # pip's notes about this machine's package mirrors are noise here
  .venv/bin/python -m pip install -q --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
  .venv/bin/python -m pip install -q -e '.[dev]' 2> >(grep -v '^WARNING: Location' >&2)
  touch "$stamp"
fi
# ---- The JupyterLab panel (labextension/) ---------------------------------------------------
# `pip install` builds it once; rebuild when its sources are newer than the build, then link the
# build into .venv so `jupyter lab` serves what was just built (a copy would go stale).
panel_build=hivemind_jupyter/labextension
if [[ ! -f $panel_build/static/style.js ]] ||
  [[ -n $(find labextension/src labextension/style labextension/schema labextension/package.json \
    -newer "$panel_build/package.json" -print -quit) ]]; then
  echo "==> building the JupyterLab panel"
  if ! (cd labextension && export PATH="$PWD/../.venv/bin:$PATH" &&
    jlpm install --immutable && jlpm build:prod) >.venv/labextension-build.log 2>&1; then
    cat .venv/labextension-build.log >&2
    exit 1
  fi
fi
if [[ ! -L .venv/share/jupyter/labextensions/hivemind-jupyter ]]; then
  .venv/bin/jupyter-builder develop --overwrite . >/dev/null 2>&1
fi
# ------------------------------------------------------------------------------------------------

echo "==> ready: $(.venv/bin/python -c 'import hivemind_nodepool as h; print("hivemind-jupyter", h.__version__)')"
