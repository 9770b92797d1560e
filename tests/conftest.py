"""Suite-wide settings: one torch thread (tiny models on a shared 2-core machine run faster and
more predictably that way, and results do not depend on the core count)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Each test starts on one thread, whatever the one before it set (`tooltune demo` sets the
    machine's core count, which later tests in the same process would otherwise inherit)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def build_tiny_qwen2(
    path, texts, vocab_size: int = 300, sharpen: bool = True, max_positions: int = 256
):
    """Save a tiny random Qwen2 with a BPE tokenizer trained on `texts` to `path` (no downloads).
    Its tokenizer knows <|im_start|>/<|im_end|> but none of tooltune's other markers, like most
    chat models. `sharpen` draws larger random weights, so outputs depend on the whole prefix."""
    import pytest

    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>"
    )
    config = transformers.Qwen2Config(
        vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    if sharpen:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 2.0 * p.shape[1] ** -0.5)
            model.get_input_embeddings().weight.normal_(0.0, 0.1)
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2():
    """`build_tiny_qwen2`, as a fixture (test modules are imported by path, not as a package)."""
    return build_tiny_qwen2


@pytest.fixture
def distinct_grpo_rewards(monkeypatch):
    """GRPO groups whose rewards differ by 0.01 a sample. An undertrained model's samples often
    earn the same reward, and a group of ties teaches nothing (it is skipped), so a pipeline
    test would not see GRPO update (test_demo's killed subprocess applies the same patch)."""
    from tooltune.training.grpo import GRPOTrainer

    train_step = GRPOTrainer.train_step

    def distinct_rewards(self, groups):
        for group in groups:
            for i, trajectory in enumerate(group):
                trajectory.total_reward += 0.01 * i
        return train_step(self, groups)

    monkeypatch.setattr(GRPOTrainer, "train_step", distinct_rewards)


class FakeJemalloc:
    """jemalloc's `mallctl` as `tooltune.allocator` calls it, for processes that do not run
    under jemalloc: one arena with a finite decay, every call succeeds."""

    values = {"arenas.narenas": 1, "arena.0.dirty_decay_ms": 10_000}

    def __call__(self, name, oldp, oldlenp, newp, newlen):
        if oldp is not None:
            oldp._obj.value = self.values.get(name.decode(), 0)
        return 0


@pytest.fixture
def fake_jemalloc(monkeypatch):
    """`tooltune.allocator` sees jemalloc with its default decay, so `keep_freed_pages` acts:
    tests read `allocator._keeping` to see where freed pages are kept."""
    from tooltune import allocator

    monkeypatch.setattr(allocator, "_mallctl", FakeJemalloc)
    monkeypatch.setattr(allocator, "_keeps_pages", lambda: False)
