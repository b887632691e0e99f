#!/usr/bin/env bash
# The test command of the README: set-up (idempotent), then the whole suite,
# Docker attack tests and the embedded-model tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AUTOPRUNE_TEST_DATA=${AUTOPRUNE_TEST_DATA:-$(cd .. && pwd)/shared/data/wikitext-2}
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 900 "$@"
