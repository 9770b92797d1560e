"""`VLLMPolicy`'s translation to and from vLLM, against a stand-in engine (vLLM needs a CUDA GPU
and is not installed here). What it checks: the exact prompt ids and sampling settings reach the
engine, completions come back with the sampled tokens' log-probs, `sync` ships the trained
weights and drops the prefix cache, and a LoRA policy is refused. Whether an installed vLLM
has these calls is checked where there is one (the last test)."""

import inspect
import os
import sys
import types

import pytest

pytest.importorskip("transformers")

from tooltune.distributed.vllm_backend import VLLMPolicy, sampling_kwargs  # noqa: E402
from tooltune.policies.hf import HFPolicy, LoraSettings  # noqa: E402
from tooltune.rollout import SamplingParams  # noqa: E402


class FakeLLM:
    """Answers every request with the prompt's last two ids, reversed, each with log-prob -0.5."""

    instances: list["FakeLLM"] = []

    def __init__(self, model, tokenizer, **kwargs):
        self.model, self.kwargs, self.requests, self.rpcs = model, kwargs, [], []
        self.resets_allowed = True
        FakeLLM.instances.append(self)

    def generate(self, requests, params, use_tqdm=False):
        self.requests.append((requests, params))
        outputs = []
        for request, p in zip(requests, params, strict=True):
            ids = request["prompt_token_ids"][-2:][::-1][: p.max_tokens]
            out = types.SimpleNamespace(
                token_ids=ids,
                logprobs=[{t: types.SimpleNamespace(logprob=-0.5)} for t in ids],
                text="".join(f"<{t}>" for t in ids),
                finish_reason="length" if len(ids) == p.max_tokens else "stop",
            )
            outputs.append(types.SimpleNamespace(outputs=[out]))
        return outputs

    def collective_rpc(self, method, args=()):
        self.rpcs.append((method, args))

    def reset_prefix_cache(self):
        self.rpcs.append(("reset_prefix_cache", ()))
        return self.resets_allowed


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # restored afterwards
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module


def test_generation_and_weight_sync_go_through_the_engine(tmp_path, tiny_qwen2, fake_vllm):
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    policy = VLLMPolicy(HFPolicy.from_pretrained(path), directory=tmp_path / "served")
    engine = FakeLLM.instances[0]
    assert engine.model == str(tmp_path / "served")
    assert (tmp_path / "served" / "config.json").exists()  # the engine loads a saved checkpoint
    assert engine.kwargs["enable_prefix_caching"]
    assert engine.kwargs["logprobs_mode"] == "processed_logprobs"  # after temperature
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # sync: in-process, no copies

    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=2, seed=5, stop=["X"])
    out = policy.generate(["a", "b"], sampling, prompt_token_ids=[[1, 2, 3], [4, 5]])
    (requests, params) = engine.requests[0]
    assert requests == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}]
    assert [p.seed for p in params] == [5, 6]  # one seed a row
    assert all(p.temperature == 0.7 and p.top_p == 0.9 and p.max_tokens == 2 for p in params)
    assert all(p.stop == ["X"] and p.logprobs == 0 for p in params)
    assert [c.token_ids for c in out] == [[3, 2], [5, 4]]
    assert [c.logprobs for c in out] == [[-0.5, -0.5]] * 2
    assert out[0].finish_reason == "length"
    assert policy.encode("hello") == policy.policy.encode("hello")  # the rest is the HF policy's

    policy.sync()
    assert [name for name, _ in engine.rpcs[1:]] == ["reset_prefix_cache"]  # no stale prefixes
    _, (weights,) = engine.rpcs[0]
    names = dict(weights)
    assert names.keys() == policy.policy.model.state_dict().keys()
    assert all(not w.requires_grad for w in names.values())
    first = next(iter(policy.policy.model.parameters()))
    assert any(w.data_ptr() == first.data_ptr() for w in names.values())  # no copies
    engine.resets_allowed = False  # what vLLM answers while requests run
    with pytest.raises(RuntimeError, match="prefix cache"):
        policy.sync()


def test_lora_policies_must_be_merged_first(tmp_path, tiny_qwen2, fake_vllm):
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    lora = HFPolicy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    with pytest.raises(ValueError, match="merge the LoRA adapters"):
        VLLMPolicy(lora)
    assert not FakeLLM.instances


def test_a_clear_error_without_vllm(tmp_path, tiny_qwen2, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMPolicy(HFPolicy.from_pretrained(path))


def test_the_calls_exist_in_the_installed_vllm():
    """Where vLLM is installed (a GPU machine; it is not in CI): every call `VLLMPolicy` makes
    exists there with the arguments it passes. The engine itself needs a GPU to start."""
    vllm = pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput

    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=4, seed=3, stop=["X"])
    params = vllm.SamplingParams(**sampling_kwargs(sampling, row=1))
    assert (params.seed, params.max_tokens, params.logprobs) == (4, 4, 0)
    assert "use_tqdm" in inspect.signature(vllm.LLM.generate).parameters
    assert "args" in inspect.signature(vllm.LLM.collective_rpc).parameters
    assert callable(vllm.LLM.reset_prefix_cache)
    engine = EngineArgs(model="m", dtype="auto", enable_prefix_caching=True,
                        logprobs_mode="processed_logprobs")  # fmt: skip
    assert engine.logprobs_mode == "processed_logprobs"
    out = CompletionOutput(index=0, text="ab", token_ids=[7, 9], cumulative_logprob=-0.9,
                           logprobs=[{7: Logprob(-0.25)}, {9: Logprob(-0.5), 3: Logprob(-2.0)}],
                           finish_reason="length")  # fmt: skip
    completion = VLLMPolicy._completion(object.__new__(VLLMPolicy), out)  # no engine needed
    assert (completion.token_ids, completion.logprobs) == ([7, 9], [-0.25, -0.5])
    assert (completion.text, completion.finish_reason) == ("ab", "length")
