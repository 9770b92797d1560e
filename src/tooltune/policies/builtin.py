"""The built-in policy: a BPE tokenizer plus the small transformer, trained from scratch.

It implements tooltune's token-policy interface (``generate``, ``encode``/``decode``,
``token_logprobs``, ``save``/``load``, ``clone``) and needs nothing beyond torch and tokenizers,
so the whole pipeline runs on a laptop CPU. See ``tooltune.policies.sampling`` for the exact
generation semantics (stop strings, log-probs, determinism).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from tooltune.chat_format import IM_START
from tooltune.policies import kv_cache
from tooltune.policies.module import ModulePolicy, frozen_copy
from tooltune.policies.tokenizer import BPETokenizer
from tooltune.policies.transformer import Transformer, TransformerConfig, config_for_size
from tooltune.prompt_format import PromptFormat, save_prompt_format

FORMAT = "tooltune-builtin"


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B, T-1] log-prob of token t+1 under the logits at t; 0 where token t+1 is padding."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return picked * attention_mask[:, 1:].to(picked.dtype)


class _Backend:
    """Runs the transformer for the shared decode loop (``sampling.DecodeBackend``)."""

    def __init__(self, model: Transformer) -> None:
        self.model = model

    def new_cache(self, batch: int, capacity: int) -> kv_cache.KVCache:
        return self.model.new_cache(batch, capacity)

    def forward_last(self, ids, mask, cache):
        return self.model(ids, attention_mask=mask, cache=cache, logits_to_keep=1)[:, -1]

    def prefill(self, ids, mask, cache: kv_cache.KVCache, cached: dict[int, kv_cache.CachedPrefix]):
        return kv_cache.prefill(self.model, ids, mask, cache, cached)

    def run_beginning(self, ids: list[int]) -> kv_cache.CachedPrefix:
        part = self.model.new_cache(1, len(ids))
        self.model(torch.tensor([ids], device=part.k.device), cache=part, logits_to_keep=1)
        return part.export_row(0, ids)

    def select_cache(self, cache: kv_cache.KVCache, rows: torch.Tensor) -> kv_cache.KVCache:
        return cache.select_rows(rows)


class BuiltinPolicy(ModulePolicy):
    """Tokenizer + transformer. ``model`` is the ``nn.Module`` (train/eval/parameters)."""

    continues_turns = True  # generate() keeps the rows it finishes (see `Policy`)

    def __init__(self, model: Transformer, tokenizer: BPETokenizer) -> None:
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                f"{model.config.vocab_size} embeddings"
            )
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def create(
        cls,
        texts: Iterable[str],
        size: str = "tiny",
        seed: int = 0,
        vocab_size: int = 4096,
        **overrides,
    ) -> BuiltinPolicy:
        """Train a tokenizer on ``texts`` and build a freshly initialised model of a named size
        (``tiny``, ``small``, ``base``, ``large``; see ``transformer.MODEL_SIZES``).
        ``overrides`` set other config fields (``max_seq_len``, ``dropout``...)."""
        tokenizer = BPETokenizer.train(texts, vocab_size=vocab_size)
        overrides.setdefault("turn_start_id", tokenizer.token_id(IM_START))
        config = config_for_size(size, tokenizer.vocab_size, **overrides)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Transformer(config)
        return cls(model, tokenizer)

    # -- tokens ---------------------------------------------------------------------------
    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def max_seq_len(self) -> int:
        return self.model.config.max_seq_len

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    @property
    def _stop_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id, self.tokenizer.endoftext_id]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.encode_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def clone(self) -> BuiltinPolicy:
        """A frozen copy (no gradients, eval mode), e.g. the GRPO reference policy."""
        frozen = BuiltinPolicy(frozen_copy(self.model), self.tokenizer)
        frozen.prompt_format = self.prompt_format
        return frozen

    # -- generation and scoring -------------------------------------------------------------
    def _backend(self) -> _Backend:
        return _Backend(self.model)

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T-1] log-prob of token t+1 given tokens <= t, with gradients. Padding may be on
        either side (positions are counted from the mask); padded targets get 0."""
        logp = self.model.target_logprobs(input_ids, attention_mask)
        return logp * attention_mask[:, 1:].to(logp.dtype)

    def prefix_token_logprobs(
        self,
        prefix_ids: torch.Tensor,
        prefix_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_index: torch.Tensor,
    ) -> torch.Tensor:
        """``token_logprobs`` of continuations that share prefixes, each prefix run once.

        ``prefix_ids``/``prefix_mask`` [P, S] hold the distinct prefixes (left-padded);
        ``input_ids``/``attention_mask`` [B, T] the continuations (right-padded), row b
        continuing prefix ``prefix_index[b]``. Returns [B, T-1]: the log-prob of continuation
        token t+1, exactly what ``token_logprobs`` gives on the concatenated row. The prefix
        keys/values are expanded to the rows inside the graph, so the gradients of every row
        flow back into the single prefix computation.
        """
        if self.model.config.copy_head:  # the copy head points into the prefix as well
            logp = self.model.prefix_target_logprobs(
                prefix_ids, prefix_mask, input_ids, attention_mask, prefix_index
            )
            return logp * attention_mask[:, 1:].to(logp.dtype)
        kv = self.model.prefix_kv(prefix_ids, prefix_mask)
        kv = [(k.index_select(0, prefix_index), v.index_select(0, prefix_index)) for k, v in kv]
        mask = torch.cat([prefix_mask[prefix_index], attention_mask], dim=1)
        prev = prefix_ids[prefix_index, -1]  # prefixes are left-padded: the last column is real
        logits = self.model(input_ids, attention_mask=mask, past_kv=kv, prev_ids=prev)
        return sequence_logprobs(logits, input_ids, attention_mask)

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """One directory: config.json, tokenizer.json, model.pt (a plain state dict) and, when
        known, prompt_format.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "model": asdict(self.model.config)}
        (directory / "config.json").write_text(json.dumps(meta, indent=2))
        self.tokenizer.save(directory / "tokenizer.json")
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, directory / "model.pt")
        save_prompt_format(self, directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> BuiltinPolicy:
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{directory} has no config.json: not a saved built-in policy")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory} holds {meta.get('format')!r}, not a {FORMAT} policy")
        prompt_format = PromptFormat.read(directory)  # a corrupt file fails before the weights load
        meta["model"].setdefault("prev_token_mix", False)  # saved before the options existed
        meta["model"].setdefault("copy_head", False)
        try:
            config = TransformerConfig(**meta["model"])
        except (TypeError, ValueError) as exc:  # a hand-edited file, or a newer tooltune's
            msg = f"{config_path} has model settings this tooltune cannot use: {exc}"
            raise ValueError(msg) from None
        model = Transformer(config)
        state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # e.g. saved before the copy head gained a parameter
            detail = str(exc).strip().splitlines()[-1].strip()
            raise ValueError(
                f"{directory}/model.pt does not match its config.json ({detail}); it was saved by "
                "another version of the built-in model: train it again (tooltune demo --fresh)"
            ) from exc
        tokenizer = BPETokenizer.load(directory / "tokenizer.json")
        policy = cls(model.to(device), tokenizer)
        policy.prompt_format = prompt_format
        return policy
