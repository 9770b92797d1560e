"""What every token policy does with its `nn.Module`, written once."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Self

import torch

from tooltune.call_grammar import CallGrammar
from tooltune.policies.constrained import TokenPieces, token_pieces
from tooltune.policies.drafting import Drafter
from tooltune.policies.sampling import DecodeBackend, generate_tokens
from tooltune.rollout import Completion, Policy, SamplingParams

if TYPE_CHECKING:
    from tooltune.prompt_format import PromptFormat


# System prompts kept between generate calls (~8 MB each for SmolLM2-135M at 330 tokens): a
# call that starts with more than this many kept drops them all first
MAX_OPENINGS = 64


class ModulePolicy(Policy):
    """Delegates `parameters`/`train`/`eval`/`to` to `self.model` (returning the policy), and
    generates through the shared decode loop (`tooltune.policies.sampling`). A subclass gives
    its tokens (`encode`, `decode`, `pad_token_id`, `_stop_ids`: the ids that end a turn),
    `max_seq_len`, `device` and the `_backend` that runs its model."""

    model: torch.nn.Module
    pad_token_id: int
    _stop_ids: list[int]
    # Keys and values one batch of a generate call may hold; a call whose rows need more is
    # decoded in several batches (`sampling.cache_batches`), where the backend says what a
    # position takes. Every copy a call holds of its rows grows with the batch, and evaluation's
    # were the demo's peak. None: one batch, however large.
    max_cache_bytes: int | None = 1 << 30
    # Decoding checks up to this many guessed tokens a row at each step, where the backend
    # can (`tooltune.policies.drafting`): the same output in fewer steps, greedy or sampled.
    # 0: one token a step. The guesses come from `drafter`, which
    # learns from this policy's completions.
    num_speculative_tokens: int = 4
    drafter: Drafter | None = None
    # How the model is prompted (tool style, generation settings): set by whoever trains it,
    # written by save() and read back by load(); None when unknown (see tooltune.prompt_format)
    prompt_format: PromptFormat | None = None
    _pieces: TokenPieces | None = None  # each token's text, for constrained decoding

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def train(self, mode: bool = True) -> Self:
        self.model.train(mode)
        return self

    def eval(self) -> Self:
        return self.train(False)

    def to(self, device: str | torch.device) -> Self:
        self.model.to(device)
        return self

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def _backend(self) -> DecodeBackend:
        raise NotImplementedError

    # -- generation -----------------------------------------------------------------------
    # The rows the last generate() call finished, kept so that the next call can continue them
    # (an episode's next turn runs only its new tokens); valid only for the weights they were
    # computed with.
    _turn_cache: dict = {}
    _turn_cache_version: tuple | None = None
    # The system prompts (each prompt's first turn) earlier calls ran, for the same weights:
    # every new episode of a task with the same tools starts from them (see MAX_OPENINGS)
    _openings: dict = {}
    _openings_version: tuple | None = None

    def generate(
        self,
        prompts: list[str],
        sampling: SamplingParams,
        prompt_token_ids: list[list[int]] | None = None,
        use_cache: bool = True,
        share_prefill: bool = True,
        reuse_turns: bool = True,
        max_new_tokens: list[int] | None = None,
        generated_before: list[list[int]] | None = None,
        grammars: list[CallGrammar | None] | None = None,
    ) -> list[Completion]:
        """Complete every prompt in one batch (semantics: ``tooltune.policies.sampling``).
        ``prompt_token_ids`` (when given) are used as-is instead of encoding ``prompts``.
        ``use_cache=False`` recomputes the whole sequence at every step (only useful to measure
        what the KV cache saves); ``share_prefill=False`` prefills every row whole, instead of
        repeated prompts once and the beginning distinct prompts share once.
        ``max_new_tokens``, ``generated_before``: see `Policy.continues_turns`.
        ``grammars`` (one per prompt, or None) constrain greedy decoding's tool calls to the
        offered tools' schemas (`tooltune.call_grammar`).

        With ``reuse_turns`` (on a policy that ``continues_turns``), the keys/values of the rows
        this call finishes are kept until the next call, and a prompt there that continues one
        of them (an episode's next turn: its conversation so far, a tool result, a new assistant
        header) runs only its new tokens instead of the whole conversation. The numbers are
        those of a full prefill up to float rounding; a weight update in between discards what
        was kept."""
        # settings checked before anything changes (the kept rows, the model's mode)
        if self.max_cache_bytes is not None and not self.max_cache_bytes > 0:
            raise ValueError(
                f"max_cache_bytes must be a positive number of bytes (or None: no limit), "
                f"got {self.max_cache_bytes!r}"
            )
        guesses = self.num_speculative_tokens
        if isinstance(guesses, bool) or not isinstance(guesses, int) or guesses < 0:
            raise ValueError(
                "num_speculative_tokens must be a whole number >= 0 (0: no guesses), "
                f"got {guesses!r}"
            )
        if prompt_token_ids is None:
            prompt_token_ids = self.encode_batch(list(prompts))
        elif len(prompt_token_ids) != len(prompts):
            raise ValueError("prompt_token_ids must have one entry per prompt")
        reuse = reuse_turns and self.continues_turns
        version = self._weights_version()
        valid = reuse and self._turn_cache_version == version
        previous = self._turn_cache if valid else {}
        # the old rows go before the new batch runs
        self._turn_cache, self._turn_cache_version = {}, None
        if not reuse or self._openings_version != version or len(self._openings) > MAX_OPENINGS:
            self._openings, self._openings_version = {}, version
        finished: dict | None = {} if reuse else None
        was_training = self.model.training
        self.model.eval()
        backend = self._backend()
        per_position = getattr(backend, "position_bytes", None)
        limit = None
        if self.max_cache_bytes is not None and per_position:
            limit = self.max_cache_bytes // per_position
        try:
            completions = generate_tokens(
                backend,
                prompt_token_ids,
                sampling,
                eos_ids=self._stop_ids,
                pad_id=self.pad_token_id,
                decode=self.decode,
                max_seq_len=self.max_seq_len,
                device=self.device,
                use_cache=use_cache,
                share_prefill=share_prefill,
                max_new_tokens=max_new_tokens,
                generated_before=generated_before,
                previous=previous,
                finished=finished,
                openings=self._openings if reuse else None,
                max_cache_positions=limit,
                drafter=self._drafter(),
                num_speculative_tokens=self.num_speculative_tokens,
                grammars=grammars,
                pieces=self.token_pieces() if grammars else None,
            )
        finally:
            self.model.train(was_training)
        if finished:
            self._turn_cache, self._turn_cache_version = finished, version
        return completions

    def token_pieces(self) -> TokenPieces:
        """Each token's text on its own, read once (constrained decoding checks them)."""
        if self._pieces is None:
            tokenizer = self.tokenizer  # type: ignore[attr-defined]
            size = len(tokenizer) if hasattr(tokenizer, "__len__") else tokenizer.vocab_size
            self._pieces = token_pieces(self.decode, size)
        return self._pieces

    def _drafter(self) -> Drafter | None:
        if self.num_speculative_tokens > 0 and self.drafter is None:
            self.drafter = Drafter()
        return self.drafter

    def _weights_version(self) -> tuple:
        """Changes whenever a parameter is updated in place (optimiser step, load) or replaced."""
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    def release_turns(self) -> None:
        """Drop the kept rows and system prompts (see `Policy.release_turns`)."""
        self._turn_cache, self._turn_cache_version = {}, None
        self._openings, self._openings_version = {}, None


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode without gradients, e.g. for the GRPO reference policy."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
