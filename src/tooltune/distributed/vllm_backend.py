"""Optional vLLM generation for Hugging Face policies (GPU; needs `pip install vllm`).

`VLLMPolicy` pairs a trainable `HFPolicy` (log-probs, gradients, saving: all in torch) with a
vLLM engine that does the sampling. The collector sees one token policy: `generate` goes to
vLLM with the exact prompt ids, everything else (`encode`, `token_logprobs`, `model`...) is the
HF policy's. After each optimiser step call `sync()` to copy the trained weights into vLLM.

Semantics that differ from tooltune's own decode loop (see `tooltune.policies.sampling`):

* vLLM seeds per request, so `SamplingParams.seed` gives each prompt of a batch the same seed
  offset by its row (`seed + row`); results are reproducible for a fixed batch, but not
  bit-identical to the torch sampler.
* The engine reports log-probs after temperature (`logprobs_mode="processed_logprobs"`, as
  tooltune's sampler does), but after top-p too, renormalised over the kept tokens where
  tooltune's sampler is not. Train with `GRPOTrainer(..., old_logprobs="recompute")` unless
  you have checked that they match `token_logprobs` at your settings.
* LoRA policies must be merged before serving (`model.merge_and_unload()`), since vLLM loads a
  plain checkpoint here.
* The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set otherwise):
  `sync` then hands the trained tensors straight to its worker. An engine in another process
  (vLLM's default, and tensor parallelism) only accepts the weight-loading function with
  `VLLM_ALLOW_INSECURE_SERIALIZATION=1` and copies every tensor through CPU memory.

Written against vLLM 0.33 (read from its source: `LLM.generate`, `collective_rpc`,
`reset_prefix_cache`, `SamplingParams`); tests/distributed/test_vllm.py checks those calls
against an installed vLLM when there is one. Nothing in tooltune imports this module unless
asked, and CI does not need vLLM.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tooltune.rollout import Completion, SamplingParams


def _vllm():
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - vLLM is an optional GPU dependency
        raise ImportError("VLLMPolicy needs vLLM: pip install vllm (CUDA GPU required)") from exc
    return vllm


def sampling_kwargs(sampling: SamplingParams, row: int) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one row of a batch."""
    return dict(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_new_tokens,
        stop=list(sampling.stop or []),
        include_stop_str_in_output=False,
        seed=None if sampling.seed is None else sampling.seed + row,
        logprobs=0,  # the sampled token's log-prob only
        skip_special_tokens=False,
    )


def _load_weights(worker: Any, weights: list[tuple[str, Any]]) -> None:
    """Runs inside each vLLM worker (through `collective_rpc`)."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMPolicy:
    """An `HFPolicy` whose `generate` runs on a vLLM engine (see the module docstring)."""

    continues_turns = False  # one generate call a turn (the HF policy's own would say yes)

    def __init__(self, policy: Any, directory: str | Path | None = None, **engine_kwargs: Any):
        vllm = _vllm()
        if hasattr(policy.model, "peft_config"):
            raise ValueError("merge the LoRA adapters first (policy.model.merge_and_unload())")
        self.policy = policy
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tooltune-vllm-")
            directory = self._tmp.name
        policy.save(directory)
        engine_kwargs.setdefault("dtype", "auto")
        engine_kwargs.setdefault("enable_prefix_caching", True)  # multi-turn prompts share prefixes
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = vllm.LLM(model=str(directory), tokenizer=str(directory), **engine_kwargs)

    def generate(
        self,
        prompts: list[str],
        sampling: SamplingParams,
        prompt_token_ids: list[list[int]] | None = None,
    ) -> list[Completion]:
        vllm = _vllm()
        if prompt_token_ids is None:
            prompt_token_ids = [self.policy.encode(p) for p in prompts]
        params = [
            vllm.SamplingParams(**sampling_kwargs(sampling, row))
            for row in range(len(prompt_token_ids))
        ]
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [self._completion(out.outputs[0]) for out in outputs]

    def _completion(self, out: Any) -> Completion:
        ids = list(out.token_ids)
        logprobs = []
        for tok, entry in zip(ids, out.logprobs or [], strict=False):
            logprobs.append(float(entry[tok].logprob) if entry and tok in entry else 0.0)
        logprobs += [0.0] * (len(ids) - len(logprobs))
        finish = "length" if out.finish_reason == "length" else "stop"
        return Completion(text=out.text, token_ids=ids, logprobs=logprobs, finish_reason=finish)

    def sync(self) -> None:
        """Copy the HF policy's current weights into every vLLM worker."""
        weights = [(k, v.detach()) for k, v in self.policy.model.state_dict().items()]
        self.llm.collective_rpc(_load_weights, args=(weights,))
        # prefix caching finds a cached prompt by its tokens, not by the weights that computed
        # its keys and values: drop them (TRL's colocated vLLM does the same after each sync)
        if self.llm.reset_prefix_cache() is False:  # vLLM refuses while requests run
            raise RuntimeError("vLLM kept its prefix cache: sync() between generate() calls")

    def __getattr__(self, name: str) -> Any:
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)
