"""Policies: the models that act.

``BuiltinPolicy`` is a small transformer with its own BPE tokenizer (torch only);
``HFPolicy`` wraps any local Hugging Face causal LM (needs the ``hf`` extra). Both share one
batched, KV-cached decode loop (``tooltune.policies.sampling``).
"""

from tooltune.policies.builtin import BuiltinPolicy
from tooltune.policies.tokenizer import BPETokenizer
from tooltune.policies.transformer import MODEL_SIZES, Transformer, TransformerConfig

__all__ = [
    "BPETokenizer",
    "BuiltinPolicy",
    "HFPolicy",
    "LoraSettings",
    "MODEL_SIZES",
    "Transformer",
    "TransformerConfig",
    "load_smollm2",
]


def __getattr__(name: str):
    # The Hugging Face side imports transformers lazily: it is an optional extra and slow to load.
    if name in ("HFPolicy", "LoraSettings"):
        from tooltune.policies import hf

        return getattr(hf, name)
    if name == "load_smollm2":
        from tooltune.policies.smollm2 import load_smollm2

        return load_smollm2
    raise AttributeError(f"module 'tooltune.policies' has no attribute {name!r}")
