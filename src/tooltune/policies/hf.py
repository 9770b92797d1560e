"""Hugging Face causal language models as tooltune policies (needs the ``hf`` extra).

Prompts are tooltune's own ChatML text (``tooltune.chat_format``) unless the model was trained on
its own chat template (tool style ``native``, ``tooltune.native_template``), so the same rollout
and training code serves the built-in model and any local ``AutoModelForCausalLM``. tooltune's
markers (``<tool_call>``, ``<think>``...) stay text the model's tokenizer already reads
(``<tool_call>`` is five SmolLM2 tokens it has embeddings for); only ChatML's turn markers and a
pad token are added when a tokenizer lacks them, each new row
initialised to the mean embedding of the tokens its text was (``marker_tokens=True`` adds every
marker as one special token, initialised the same way). With ``LoraSettings`` only low-rank
adapters (and the embedding rows of added tokens) are trained. The default model, SmolLM2, comes
from ``tooltune.policies.smollm2``.

``dtype="auto"`` loads the frozen weights in bf16 where bf16 matrix products are fast (a CUDA
device that supports it, a CPU with AVX-512 BF16 or AMX) and fp32 elsewhere; LoRA weights, their
gradients and the optimizer state stay fp32 either way, and log-probs are computed in fp32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import checkpoint as _checkpoint  # noqa: F401  (torch.utils.checkpoint)

from tooltune.chat_format import END_OF_TEXT, IM_END, IM_START, PAD, SPECIAL_TOKENS
from tooltune.policies import llama_forward
from tooltune.policies.builtin import sequence_logprobs
from tooltune.policies.module import ModulePolicy, frozen_copy
from tooltune.prompt_format import PromptFormat, save_prompt_format

SETTINGS_FILE = "tooltune_hf.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def require_transformers():
    """The ``transformers`` module, imported on first use (it is optional and slow to load)."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Hugging Face policies need the 'hf' extra: pip install 'tooltune[hf]'"
        ) from exc
    return transformers


@dataclass
class LoraSettings:
    """LoRA adapters on the attention and MLP projections (names absent from a model are
    skipped). ``train_new_tokens`` also trains the embedding rows of the tokens tooltune added
    to the vocabulary: without it those rows keep their initial mean embedding and the model
    can hardly learn to emit ``<tool_call>``.

    ``top_layers`` > 0 puts adapters on the last that many decoder layers only: backward then
    stops there, and the layers below run without adapters (SmolLM2-135M, two 780-token rows,
    fp32 on 2 cores: 14.3 s a step with adapters on all 30 layers and dropout 0.05, 7.3 s on
    the top 10 without dropout). Trainable new-token rows would need gradients through every
    layer, so they cancel that saving."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    top_layers: int = 0  # 0: every layer
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        ]
    )  # fmt: skip
    train_new_tokens: bool = True


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions that skip padding on either side (what the model saw unpadded)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matrix products are fast on ``device``: a CUDA device that supports bf16,
    or a CPU with AVX-512 BF16 or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":  # compute capability 8.0 (Ampere) or later; emulated is slow
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` -> bf16 where `fast_bf16`, else fp32; names as in ``DTYPES``; a dtype as is."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class _Backend:
    """Decoding through the model's own ``transformers`` forward (any architecture)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def new_cache(self, batch: int, capacity: int) -> Any:
        return require_transformers().DynamicCache()

    def forward_last(self, ids, mask, cache):
        positions = position_ids_from_mask(mask)[:, -ids.shape[1] :]
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    def select_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        cache.batch_select_indices(rows)
        return cache


class _DirectBackend:
    """Decoding through ``llama_forward`` into a preallocated cache (Llama-family models)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.plain = llama_forward.decodes_plainly(model)

    def new_cache(self, batch: int, capacity: int) -> llama_forward.StaticKVCache:
        return llama_forward.StaticKVCache(self.model, batch, capacity)

    @property
    def position_bytes(self) -> int:
        return llama_forward.position_bytes(self.model)

    def forward_last(self, ids, mask, cache):
        if self.plain and cache is not None and cache.length > 0 and ids.shape[1] == 1:
            return llama_forward.decode_step(self.model, ids, mask, cache)
        hidden = llama_forward.hidden_states(self.model, ids, mask, cache, keep=1)
        return llama_forward.logits(self.model, hidden[:, -1])

    def forward_tokens(self, ids, mask, cache):
        """Logits [B, T, V] of ids [B, T] after the cached positions (guesses checked)."""
        if self.plain:
            return llama_forward.decode_tokens(self.model, ids, mask, cache)
        hidden = llama_forward.hidden_states(self.model, ids, mask, cache)
        return llama_forward.logits(self.model, hidden)

    def select_cache(self, cache, rows: torch.Tensor):
        return cache.select_rows(rows)

    def prefill(self, ids, mask, cache, cached: dict) -> torch.Tensor:
        if not cached:
            return self.forward_last(ids, mask, cache)
        return llama_forward.prefill(self.model, ids, mask, cache, cached)

    def run_beginning(self, ids: list[int]):
        return llama_forward.run_prefix(self.model, ids)


class HFPolicy(ModulePolicy):
    """A local Hugging Face causal LM behind tooltune's token-policy interface.

    ``direct_forward`` (default: whenever ``llama_forward.supports`` the model) runs
    generation and scoring through ``tooltune.policies.llama_forward`` instead of the model's
    ``transformers`` forward: same outputs, less overhead per call."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        base_path: str | None = None,
        direct_forward: bool | None = None,
    ) -> None:
        supported = llama_forward.supports(model)
        if direct_forward and not supported:
            raise ValueError(
                f"direct_forward supports {', '.join(llama_forward.ARCHITECTURES)} models "
                "without sliding-window attention"
            )
        self.direct_forward = supported if direct_forward is None else direct_forward
        self.model = model
        self.tokenizer = tokenizer
        self.base_path = base_path
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.eos_token_id = int(tokenizer.convert_tokens_to_ids(IM_END))
        stops = {self.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)}
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        unk = tokenizer.unk_token_id
        self._stop_ids = sorted(int(i) for i in stops if i is not None and i != unk)
        if self.device.type == "cuda":  # room for a GPU's batches: a quarter of its memory
            self.max_cache_bytes = torch.cuda.get_device_properties(self.device).total_memory // 4

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        lora: LoraSettings | None = None,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        direct_forward: bool | None = None,
        marker_tokens: bool = False,
    ) -> HFPolicy:
        """Load a local model directory, or a directory written by ``save`` (a full model or
        a LoRA adapter with its base). ``lora`` wraps a plain model in new adapters; ``dtype``
        is the frozen weights' (``"auto"``: see `resolve_dtype`), trainable ones stay fp32;
        ``marker_tokens`` adds every chat-format marker as one token (see the module's
        docstring); ``direct_forward`` as in the constructor."""
        tf = require_transformers()
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a model directory")
        dtype = resolve_dtype(dtype, device)
        prompt_format = PromptFormat.read(path)  # None for a model tooltune did not save
        if (path / "adapter_config.json").exists():
            policy = cls._load_adapter(path, dtype, device, direct_forward)
            policy.prompt_format = prompt_format
            return policy
        if not any((path / name).exists() for name in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the model's "
                "tokenizer into the same directory (tokenizer.save_pretrained(path))"
            )
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        added = add_tooltune_tokens(tokenizer, model, marker_tokens)
        if lora is not None:
            model = apply_lora(model, lora, added)
        if lora is not None:  # full fine-tuning keeps the compute dtype (see training.optim)
            model = _trainable_in_fp32(model)
        policy = cls(model.to(device), tokenizer, str(path.resolve()), direct_forward)
        policy.prompt_format = prompt_format
        return policy

    load = from_pretrained

    @classmethod
    def _load_adapter(cls, path: Path, dtype: torch.dtype, device, direct_forward) -> HFPolicy:
        tf = require_transformers()
        from peft import PeftModel

        meta_path = path / SETTINGS_FILE
        if meta_path.exists():
            base = json.loads(meta_path.read_text())["base_path"]
        else:
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = tf.AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, path, is_trainable=True)
        return cls(_trainable_in_fp32(model).to(device), tokenizer, base, direct_forward)

    # -- tokens ---------------------------------------------------------------------------
    @property
    def max_seq_len(self) -> int:
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", None) or 2048)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the frozen weights compute in (bf16 or fp32; see `resolve_dtype`)."""
        return self.model.get_input_embeddings().weight.dtype

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def clone(self) -> HFPolicy:
        """A frozen copy (no gradients, eval mode), e.g. the GRPO reference policy. LoRA
        adapters are merged into the copy's weights: the same function up to the weights'
        rounding, without each adapter's casts and two small products in every layer (a quarter
        of a bf16 reference pass: SmolLM2-135M, r=16 on every projection, 0.95 against 1.27 s
        in benchmarks/smollm2_vs_trl.py)."""
        model = frozen_copy(self.model)
        if is_peft(model):
            model = model.merge_and_unload()
        frozen = HFPolicy(model, self.tokenizer, self.base_path, self.direct_forward)
        frozen.prompt_format = self.prompt_format
        return frozen

    # -- generation and scoring -------------------------------------------------------------
    @property
    def continues_turns(self) -> bool:
        """The direct forward keeps the rows generate() finishes (see `Policy`)."""
        return self.direct_forward

    def _backend(self) -> Any:
        return _DirectBackend(self.model) if self.direct_forward else _Backend(self.model)

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        scored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T-1] log-prob of token t+1 given tokens <= t, with gradients; 0 on padding.
        With ``scored`` [B, T-1] only the positions it marks are computed, the rest are 0 (see
        `scored_logprobs`: no [B, T, vocabulary] logits)."""
        if self.direct_forward:
            hidden = llama_forward.hidden_states(self.model, input_ids, attention_mask)
            head = partial(llama_forward.logits, self.model)
            if scored is not None:
                return scored_logprobs(head, hidden, input_ids, attention_mask, scored)
            return sequence_logprobs(head(hidden), input_ids, attention_mask)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        return sequence_logprobs(out.logits, input_ids, attention_mask)

    def prefix_token_logprobs(
        self,
        prefix_ids: torch.Tensor,
        prefix_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_index: torch.Tensor,
        scored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``token_logprobs`` of continuations that share prefixes, each prefix run once
        (same contract as ``BuiltinPolicy.prefix_token_logprobs``; ``scored`` as in
        ``token_logprobs``). The prefix pass fills a ``DynamicCache`` whose tensors stay in the
        autograd graph; selecting its rows with ``prefix_index`` expands it to the
        continuations, and gradients sum back."""
        if self.direct_forward:
            kv, prefix_mask = llama_forward.prefix_kv(self.model, prefix_ids, prefix_mask)
            kv = [(k.index_select(0, prefix_index), v.index_select(0, prefix_index)) for k, v in kv]
            mask = torch.cat([prefix_mask[prefix_index], attention_mask], dim=1)
            hidden = llama_forward.hidden_states(self.model, input_ids, mask, past_kv=kv)
            head = partial(llama_forward.logits, self.model)
            if scored is not None:
                return scored_logprobs(head, hidden, input_ids, attention_mask, scored)
            return sequence_logprobs(head(hidden), input_ids, attention_mask)
        cache = require_transformers().DynamicCache()
        self.model(
            input_ids=prefix_ids,
            attention_mask=prefix_mask,
            position_ids=position_ids_from_mask(prefix_mask),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # the prefix is only context: skip its LM head
        )
        cache.batch_select_indices(prefix_index)
        mask = torch.cat([prefix_mask[prefix_index], attention_mask], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask)[:, prefix_ids.shape[1] :],
            past_key_values=cache,
            use_cache=True,
        )
        return sequence_logprobs(out.logits, input_ids, attention_mask)

    # -- persistence ------------------------------------------------------------------------
    def _base_vocab_size(self) -> int | None:
        if self.base_path is None:
            return None
        config = json.loads((Path(self.base_path) / "config.json").read_text())
        return config.get("vocab_size")

    def save(self, directory: str | Path) -> None:
        """``save_pretrained`` of the model (the adapter only, for LoRA), the tokenizer and,
        when known, the prompt format."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if is_peft(self.model):
            # Rows added to the vocabulary were initialised randomly: the adapter must carry
            # the (resized) embeddings, or a reload would not reproduce the model.
            resized = len(self.tokenizer) != self._base_vocab_size()
            self.model.save_pretrained(directory, save_embedding_layers=resized)
        else:
            self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if is_peft(self.model):
            meta = {"base_path": self.base_path}
            (directory / SETTINGS_FILE).write_text(json.dumps(meta, indent=2))
        save_prompt_format(self, directory)


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def scored_logprobs(
    head: Any,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scored: torch.Tensor,
    chunk: int = 1024,
) -> torch.Tensor:
    """What ``sequence_logprobs(head(hidden), ...)`` gives at the positions ``scored`` [B, T-1]
    marks (0 elsewhere), with the LM head run on those positions alone, ``chunk`` at a time
    and recomputed in the backward pass: a pretrained vocabulary is large (SmolLM2: 49,152),
    and [rows, tokens, vocabulary] logits of every position were most of SFT's memory, for
    prompt and tool-output positions that carry no loss."""
    keep = (scored != 0) & (attention_mask[:, 1:] != 0)
    rows, targets = hidden[:, :-1][keep], input_ids[:, 1:][keep]

    def pick(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(head(h).float(), t, reduction="none")

    parts = []
    for start in range(0, rows.shape[0], chunk):
        h, t = rows[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(torch.utils.checkpoint.checkpoint(pick, h, t, use_reentrant=False))
        else:
            parts.append(pick(h, t))
    out = hidden.new_zeros(keep.shape, dtype=torch.float32)
    if parts:
        out = out.masked_scatter(keep, torch.cat(parts))
    return out


def _trainable_in_fp32(model: Any) -> Any:
    """Trainable parameters (LoRA adapters, added token rows) in fp32 whatever the frozen
    weights' dtype: bf16 weights would lose small AdamW updates to rounding. (Without LoRA
    every weight trains in the compute dtype, and `training.optim.AdamW` keeps fp32 masters.)"""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def add_tooltune_tokens(tokenizer: Any, model: Any, marker_tokens: bool = False) -> list[int]:
    """Make ChatML's turn markers (with ``marker_tokens``, every chat-format marker) single
    special tokens and give the tokenizer a pad token; grow the embeddings to match. Each new
    row starts as the mean of the rows of the tokens its text was before (``<tool_call>`` as
    the mean of ``<``, ``tool``, ``_``, ``call``, ``>``), not as noise around the vocabulary's
    mean. Returns the ids of the tokens added."""
    from tokenizers import AddedToken

    wanted = SPECIAL_TOKENS if marker_tokens else [IM_START, IM_END]
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if tokenizer.pad_token_id is None and PAD not in vocab and PAD not in missing:
        missing.append(PAD)
    pieces = {t: tokenizer.encode(t, add_special_tokens=False) for t in missing}
    if missing:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = PAD
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    added = [int(tokenizer.convert_tokens_to_ids(t)) for t in missing]
    tables = {model.get_input_embeddings().weight}
    if model.get_output_embeddings() is not None:
        tables.add(model.get_output_embeddings().weight)
    with torch.no_grad():
        for table in tables:
            for token, new_id in zip(missing, added, strict=True):
                old = [i for i in pieces[token] if i < new_id and i not in added]
                if old:
                    table[new_id] = table[old].mean(dim=0)
    return added


def train_top_layers(model: Any, count: int, keep_embeddings: bool = False) -> None:
    """Full fine-tuning of the last ``count`` decoder layers and the final norm only: the layers
    below and the token embeddings (SmolLM2 ties them to the output head) keep their pretrained
    weights, and backward stops at the lowest trained layer. SmolLM2-135M, 4 rows of ~700
    tokens, bf16 on 2 cores: 2.8 s a step with the top 20 of 30 layers trained, 4.3 s with
    every weight. ``keep_embeddings`` leaves the embeddings trainable (rows of tokens tooltune
    added start untrained), which makes backward run through every layer again."""
    layers = list(model.get_decoder().layers)
    if not 0 < count <= len(layers):
        raise ValueError(f"cannot train the top {count} of {len(layers)} layers")
    for layer in layers[: len(layers) - count]:
        layer.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(keep_embeddings)


def apply_lora(model: Any, settings: LoraSettings, new_token_ids: list[int]) -> Any:
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in settings.target_modules if t in names]
    if not targets:
        raise ValueError(
            f"none of the LoRA target modules {settings.target_modules} is in the model"
        )
    trainable_tokens = None
    if settings.train_new_tokens and new_token_ids:
        trainable_tokens = {"embed_tokens": sorted(new_token_ids)}
        if "embed_tokens" not in names:
            trainable_tokens = sorted(new_token_ids)  # peft finds the embedding itself
    layers = None
    count = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if settings.top_layers and count:
        layers = list(range(max(0, count - settings.top_layers), count))
    config = LoraConfig(
        r=settings.r,
        layers_to_transform=layers,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        trainable_token_indices=trainable_tokens,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def describe_compute(policy: Any) -> str:
    """Which compute path a Hugging Face policy runs, for the log: dtype, device, and why."""
    dtype, device = policy.compute_dtype, policy.device
    if dtype == torch.bfloat16:
        why = "fast bf16 on this device"
    elif device.type == "cpu" and not fast_bf16(device):
        why = "this CPU has no AVX-512 BF16 or AMX: bf16 would be slower"
    else:
        why = "as configured"
    trainable = [p for p in policy.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    masters = (
        " (fp32 master copies)" if any(p.dtype != torch.float32 for p in trainable) else " in fp32"
    )
    return (f"{str(dtype).removeprefix('torch.')} weights on {device} ({why}), "
            f"{count:,} trainable parameters{masters}")  # fmt: skip
