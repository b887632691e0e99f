#!/usr/bin/env bash
# The test command of the README: set-up (idempotent), then the whole suite,
# Docker attack tests and the embedded-model tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AUTOPRUNE_TEST_DATA=${AUTOPRUNE_TEST_DATA:-$(cd .. && pwd)/shared/data/wikitext-2}
# setup.sh started the Docker engine: a Docker test that would skip fails instead (tests/conftest.py),
# and the agent tests run the Docker sandbox. AUTOPRUNE_REQUIRE_DOCKER=0 allows skipping.
export AUTOPRUNE_REQUIRE_DOCKER=${AUTOPRUNE_REQUIRE_DOCKER:-1}
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 900 "$@"
