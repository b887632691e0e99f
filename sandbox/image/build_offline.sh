#!/usr/bin/env bash
# Build the sandbox image offline (debootstrap base + local wheels); cached and idempotent.
# Usage: sandbox/image/build_offline.sh [--force]     (same as: autoprune-agent sandbox build)
set -euo pipefail
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m autoprune.sandbox.build "$@"
