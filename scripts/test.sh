#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: lint, types, stub drift, the panel's lint and
# unit tests, then pytest.
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ -z ${HIVEMIND_NO_DOCKER:-} ]]; then
  scripts/start-docker.sh
  if [[ -x .venv/bin/hivemind-worker ]] && .venv/bin/hivemind-worker image build --help >/dev/null 2>&1; then
    .venv/bin/hivemind-worker image build --bootstrap --if-missing
  fi
fi
export PATH="$PWD/.venv/bin:$PATH"

echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy"
mypy
echo "==> generated stubs"
python scripts/gen_proto.py --check
echo "==> settings tables in the docs"
python scripts/settings_docs.py --check
echo "==> panel: lint and unit tests"
# setup.sh installs node_modules only when it rebuilds the panel; lint and jest need them always.
# --immutable fails when package.json and yarn.lock disagree, and is quick when nothing changed.
(
  cd labextension
  if ! jlpm install --immutable >../.venv/labextension-install.log 2>&1; then
    cat ../.venv/labextension-install.log >&2
    exit 1
  fi
  jlpm lint:check
  jlpm test
)

echo "==> pytest"
status=0
python -m pytest "$@" || status=$?
if [[ $status == 5 ]]; then
  echo "pytest collected no tests: that is a failure here" >&2
fi
exit $status
