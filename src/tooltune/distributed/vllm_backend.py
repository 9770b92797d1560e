"""Optional vLLM generation for Hugging Face policies (GPU; needs `pip install vllm`).

`VLLMPolicy` pairs a trainable `HFPolicy` (log-probs, gradients, saving: all in torch) with a
vLLM engine that does the sampling. The collector sees one token policy: `generate` goes to
vLLM with the exact prompt ids, everything else (`encode`, `token_logprobs`, `model`...) is the
HF policy's. After each optimiser step call `sync()` to copy the trained weights into vLLM.

Semantics that differ from tooltune's own decode loop (see `tooltune.policies.sampling`):

* vLLM seeds per request, so `SamplingParams.seed` gives each prompt of a batch the same seed
  offset by its row (`seed + row`); results are reproducible for a fixed batch, but not
  bit-identical to the torch sampler.
* The log-probs vLLM reports depend on its `logprobs_mode`. Train with
  `GRPOTrainer(..., old_logprobs="recompute")` unless you have checked that they match
  `token_logprobs` at your temperature.
* LoRA policies must be merged before serving (`model.merge_and_unload()`), since vLLM loads a
  plain checkpoint here.

Nothing in tooltune imports this module unless asked, and CI does not need vLLM.
"""

from __future__ import annotations

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
        params = []
        for row in range(len(prompt_token_ids)):
            params.append(
                vllm.SamplingParams(
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_new_tokens,
                    stop=list(sampling.stop or []),
                    include_stop_str_in_output=False,
                    seed=None if sampling.seed is None else sampling.seed + row,
                    logprobs=0,  # the sampled token's log-prob only
                    skip_special_tokens=False,
                )
            )
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

    def __getattr__(self, name: str) -> Any:
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)
