import json
import time
from dataclasses import replace

import pytest

from tooltune import (
    AgentConfig,
    AgentTrajectory,
    Completion,
    Policy,
    SamplingParams,
    ScriptedPolicy,
    TaskTier,
    ToolRegistry,
    TrajectoryCollector,
    read_trajectories,
    tool,
    write_trajectories,
)
from tooltune.chat_format import IM_END, parse_prompt
from tooltune.messages import trajectory_from_messages, trajectory_to_messages


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def nap(seconds: float) -> str:
    """Sleep a while."""
    time.sleep(seconds)
    return "rested"


CALL = '<tool_call>{"name": "multiply", "arguments": {"a": 17, "b": 23}}</tool_call>'


def collector(script, **config):
    registry = ToolRegistry([multiply, nap], config=AgentConfig(**config))
    return TrajectoryCollector(ScriptedPolicy(script), registry, registry.config)


def test_think_call_observe_answer():
    t = collector(
        {"What's 17*23?": ["<think>multiply</think>\n" + CALL, "17*23 = 391"]}
    ).collect_trajectory("What's 17*23?")
    assert [s.action.type for s in t.steps] == ["tool_call", "respond"]
    assert t.steps[0].tool_responses[0].result == 391
    assert '"result": 391' in t.steps[0].observation
    assert t.final_answer == "17*23 = 391" and t.metadata["stop_reason"] == "answer"
    # the model saw its own text and the tool turn
    text = t.metadata["text"]
    assert (
        text.count("<|im_start|>assistant\n") == 2 and "<|im_start|>tool\n<tool_response>" in text
    )


def test_max_turns_and_bad_calls_recorded():
    t = collector(["<tool_call>{oops</tool_call>"] * 5, max_turns=3).collect_trajectory("loop")
    assert len(t.steps) == 3 and t.final_answer is None and t.metadata["stop_reason"] == "max_turns"
    assert all(not s.tool_responses[0].success for s in t.steps)
    assert "not valid JSON" in t.steps[0].observation


def test_batch_runs_tool_calls_of_all_episodes_concurrently():
    nap_call = '<tool_call>{"name": "nap", "arguments": {"seconds": 0.5}}</tool_call>'
    prompts = [f"task {i}" for i in range(6)]
    c = collector({p: [nap_call, "done"] for p in prompts})
    start = time.perf_counter()
    trajectories = c.collect(prompts)
    assert time.perf_counter() - start < 1.5
    assert [t.final_answer for t in trajectories] == ["done"] * 6


def test_per_turn_limit_applies_in_rollouts():
    calls = "\n".join([CALL] * 4)
    t = collector({"x": [calls, "ok"]}, max_tool_calls_per_turn=2).collect_trajectory("x")
    assert [r.success for r in t.steps[0].tool_responses] == [True, True, False, False]


def test_num_samples_groups_and_verifier_and_reward():
    class Task:
        def __init__(self, i):
            self.id, self.prompt, self.tier, self.tools = (
                f"t{i}",
                f"q{i}",
                TaskTier.SIMPLE,
                ["multiply"],
            )

    registry = ToolRegistry([multiply, nap])
    c = TrajectoryCollector(
        ScriptedPolicy({"q0": [CALL, "391"], "q1": ["no idea"]}),
        registry,
        verifier=lambda task, t: t.final_answer == "391",
        reward_fn=lambda t, task: 1.0 if t.final_answer == "391" else 0.0,
    )
    out = c.collect([Task(0), Task(1)], num_samples=3)
    assert [t.task_id for t in out] == ["t0"] * 3 + ["t1"] * 3
    assert [t.success for t in out] == [True] * 3 + [False] * 3
    assert [t.total_reward for t in out] == [1.0] * 3 + [0.0] * 3
    assert [tt["function"]["name"] for tt in out[0].tools] == ["multiply"]  # only the task's tools
    assert len({t.metadata["episode_id"] for t in out}) == 6


class CharPolicy(Policy):
    """A token policy over characters, to check the token record without a real model."""

    specials = ["<|im_end|>", "<|im_start|>"]

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            for n, s in enumerate(self.specials):
                if text.startswith(s, i):
                    ids.append(1000 + n)
                    i += len(s)
                    break
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids

    def decode(self, ids):
        return "".join(self.specials[i - 1000] if i >= 1000 else chr(i) for i in ids)

    def __init__(self, script):
        self.inner = ScriptedPolicy(script)
        self.seen = []

    def generate(self, prompts, sampling, prompt_token_ids=None):
        self.seen.append(prompt_token_ids)
        out = []
        for prompt, ids in zip(prompts, prompt_token_ids, strict=True):
            assert self.decode(ids) == prompt  # the exact ids of the conversation come in
            text = self.inner.generate([prompt], sampling)[0].text
            gen = self.encode(text) + [1000]
            out.append(Completion(text, gen, [-0.5] * len(gen)))
        return out


def test_token_record_has_no_drift_and_masks_only_generated_tokens():
    policy = CharPolicy({"q": [CALL, "391"]})
    registry = ToolRegistry([multiply])
    t = TrajectoryCollector(policy, registry).collect_trajectory("q")
    rec = t.tokens
    assert len(rec.ids) == len(rec.mask) == len(rec.logprobs)
    assert policy.decode(rec.ids) == t.metadata["text"]  # re-rendering gives the same tokens
    generated = "".join(policy.decode([i]) for i, m in zip(rec.ids, rec.mask, strict=True) if m)
    assert generated == CALL + IM_END + "391" + IM_END
    assert all(lp == -0.5 for lp, m in zip(rec.logprobs, rec.mask, strict=True) if m)
    assert all(lp == 0.0 for lp, m in zip(rec.logprobs, rec.mask, strict=True) if not m)


def test_constrained_calls_give_each_episode_the_grammar_of_its_tools():
    """Greedy decoding gets a grammar per episode that accepts its tools' valid calls only;
    sampled decoding and policies without tokens are refused at the start."""

    class Constrained(CharPolicy):
        def generate(self, prompts, sampling, prompt_token_ids=None, grammars=None):
            self.grammars = grammars
            return super().generate(prompts, sampling, prompt_token_ids)

    policy, registry = Constrained({"q": [CALL, "391"]}), ToolRegistry([multiply])
    greedy = SamplingParams(temperature=0.0, max_new_tokens=64)
    t = TrajectoryCollector(policy, registry, sampling=greedy, constrained_calls=True)
    assert t.collect_trajectory("q").final_answer == "391"
    (grammar,) = policy.grammars
    assert grammar.allows(CALL) and grammar.closed(CALL)
    assert not grammar.allows(CALL.replace("multiply", "divide"))
    assert not grammar.allows('<tool_call>{"name": "multiply", "arguments": {"a": 1.5')
    for other, sampling in [
        (policy, SamplingParams(temperature=0.7)),
        (ScriptedPolicy({}), greedy),
    ]:
        with pytest.raises(ValueError, match="greedily"):
            TrajectoryCollector(other, registry, sampling=sampling, constrained_calls=True)


class PiecewiseCharPolicy(CharPolicy):
    """A CharPolicy that, like the built-in model, writes a turn in pieces: each call writes
    at most the row's `max_new_tokens`, continuing after `generated_before`."""

    continues_turns = True

    def __init__(self, script):
        super().__init__(script)
        self.calls = []  # per call: (user prompt, turn index, tokens written before) per row

    def generate(self, prompts, sampling, prompt_token_ids, max_new_tokens, generated_before):
        out, rows = [], []
        for prompt, ids, budget, before in zip(
            prompts, prompt_token_ids, max_new_tokens, generated_before, strict=True
        ):
            assert self.decode(ids) == prompt + self.decode(before)  # the turn so far comes in
            turn = prompt.count("<|im_start|>assistant") - 1
            rows.append((parse_prompt(prompt)[1]["content"], turn, len(before)))
            whole = self.encode(self.inner.generate([prompt], sampling)[0].text) + [1000]
            assert whole[: len(before)] == list(before)
            gen = whole[len(before) :][:budget]
            done = gen[-1:] == [1000]
            out.append(
                Completion(self.decode(gen), gen, [-0.5] * len(gen), "stop" if done else "length")
            )
        self.calls.append(rows)
        return out


def test_the_collector_releases_what_a_token_policy_kept():
    """`release_turns` (a `Policy` member, a no-op by default) runs once the episodes end."""

    class Keeping(CharPolicy):
        released = 0

        def release_turns(self):
            self.released += 1

    policy = Keeping({"q": [CALL, "391"]})
    TrajectoryCollector(policy, ToolRegistry([multiply])).collect(["q", "q"])
    assert policy.released == 1
    assert not CharPolicy.continues_turns  # the Policy defaults: one call per turn


def test_rollouts_keep_freed_pages_while_they_run(fake_jemalloc):
    """Every generate call frees a cache and the next allocates one of a similar size: under
    jemalloc the pages stay for reuse while episodes run (evaluation 1.6x faster, 19x fewer
    page faults: benchmarks/RESULTS.md), and go back when the collection ends."""
    from tooltune import allocator

    seen = []

    class Recording(ScriptedPolicy):
        def generate(self, prompts, sampling, prompt_token_ids=None):
            seen.append(allocator._keeping)
            return super().generate(prompts, sampling, prompt_token_ids)

    registry = ToolRegistry([multiply])
    TrajectoryCollector(Recording({"q": [CALL, "391"]}), registry).collect(["q"])
    assert seen == [True, True] and not allocator._keeping


def test_episodes_start_their_next_turn_while_others_still_write():
    long_answer = "x" * 150
    policy = PiecewiseCharPolicy({"long": [long_answer], "short": [CALL, "391"]})
    config = AgentConfig(max_new_tokens=120)
    collector = TrajectoryCollector(policy, ToolRegistry([multiply]), config)
    long, short = collector.collect(["long", "short"])
    # pieces of 32 tokens: "short" ends its call turn in its third piece and writes its answer
    # in the next call, while "long" is still in the middle of its first turn
    assert [(prompt, turn) for prompt, turn, _ in policy.calls[3]] == [("long", 0), ("short", 1)]
    assert len(policy.calls) == 4  # 32 + 32 + 32 + 24 = the 120-token budget of "long"
    assert [before for _, _, before in policy.calls[3]] == [96, 0]
    assert short.final_answer == "391" and len(short.steps) == 2
    assert short.steps[0].tool_responses[0].result == 391
    # the long turn was cut at exactly max_new_tokens, and its pieces form one turn
    generated = [i for i, m in zip(long.tokens.ids, long.tokens.mask, strict=True) if m]
    assert policy.decode(generated) == "x" * 120
    assert long.final_answer == "x" * 120 and len(long.steps) == 1
    for t in (long, short):
        assert policy.decode(t.tokens.ids) == t.metadata["text"]


def test_a_finished_episode_hands_its_place_to_the_next_task():
    script = {"long": ["x" * 250], "a": [CALL, "391"], "b": ["done"], "c": ["done"]}
    config = AgentConfig(max_new_tokens=200)
    prompts = ["long", "a", "b", "c"]
    policy = PiecewiseCharPolicy(script)
    finished = []
    out = TrajectoryCollector(policy, ToolRegistry([multiply]), config).collect(
        prompts, max_active=2, on_finish=lambda t: finished.append(t.prompt)
    )
    assert max(len(rows) for rows in policy.calls) == 2
    # "b" and "c" ran beside "long", each as soon as a place was free: the batch stayed full
    started = {p: next(i for i, rows in enumerate(policy.calls) if p in [r[0] for r in rows])
               for p in prompts}  # fmt: skip
    assert started["b"] < len(policy.calls) - 1 and started["c"] > started["b"]
    assert finished.index("b") < finished.index("long") and sorted(finished) == sorted(prompts)
    # the same episodes as all at once, in task order
    everything = TrajectoryCollector(PiecewiseCharPolicy(script), ToolRegistry([multiply]), config)
    assert [t.prompt for t in out] == prompts
    assert [t.metadata["text"] for t in out] == [
        t.metadata["text"] for t in everything.collect(prompts)
    ]
    with pytest.raises(ValueError, match="max_active must be at least 1"):
        everything.collect(prompts, max_active=0)


def test_max_trajectory_len_stops_episode():
    policy = CharPolicy({"q": [CALL] * 10})
    config = AgentConfig(max_trajectory_len=2000, max_new_tokens=100)
    t = TrajectoryCollector(policy, ToolRegistry([multiply]), config).collect_trajectory("q")
    assert t.metadata["stop_reason"] == "max_trajectory_len"
    assert len(t.tokens) <= 2000


def _sample_trajectory():
    return collector(
        {"What's 17*23?": ["<think>plan</think>\n" + CALL + "\n" + CALL.replace("17", "2"), "391"]}
    ).collect_trajectory("What's 17*23?")


def test_json_round_trip_is_lossless(tmp_path):
    t = _sample_trajectory()
    t.reward_components = {"outcome": 1.0}
    assert AgentTrajectory.from_json(t.to_json()) == t
    path = tmp_path / "t.jsonl"
    assert write_trajectories(path, [t, t]) == 2
    assert read_trajectories(path) == [t, t]


def test_openai_messages_round_trip(tmp_path):
    t = _sample_trajectory()
    messages = trajectory_to_messages(t, system_prompt="sys")
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    call = messages[2]["tool_calls"][0]
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {
        "a": 17,
        "b": 23,
    }
    assert messages[3]["tool_call_id"] == call["id"] and messages[2]["reasoning_content"] == "plan"
    back = trajectory_from_messages(messages, TaskTier.SIMPLE, t.tools)
    assert [s.action for s in back.steps] == [replace(s.action, raw=None) for s in t.steps]
    assert [[(r.call_id, r.success, r.result) for r in s.tool_responses] for s in back.steps] == [
        [(r.call_id, r.success, r.result) for r in s.tool_responses] for s in t.steps
    ]
    assert back.final_answer == "391" and back.steps[0].observation == t.steps[0].observation
    path = tmp_path / "m.jsonl"
    write_trajectories(path, [t], messages=True)
    row = json.loads(path.read_text())
    assert set(row) >= {"messages", "tools"}
    assert read_trajectories(path)[0].final_answer == "391"


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_trajectories(path)


def test_scripted_policy_reads_turns_from_prompt():
    policy = ScriptedPolicy({"hi": ["a", "b"]})
    from tooltune.chat_format import render_prompt

    prompt = render_prompt(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]
    )
    assert parse_prompt(prompt)[-1]["role"] == "assistant"
    assert policy.generate([prompt], None)[0].text == "b"


def test_segments_rebuild_the_collected_text_and_tokenize():
    t = collector({"q": ["<think>x</think>", "  " + CALL + " ", "391"]}).collect_trajectory("q")
    from tooltune.rollout import tokenize_trajectory, trajectory_segments

    assert t.steps[1].action.raw == "  " + CALL + " "  # the model's exact text is kept
    assert "".join(text for text, _ in trajectory_segments(t)) == t.metadata["text"]
    policy = CharPolicy({})
    record = tokenize_trajectory(t, policy.encode)
    assert policy.decode(record.ids) == t.metadata["text"]
    model_text = "".join(
        policy.decode([i]) for i, m in zip(record.ids, record.mask, strict=True) if m
    )
    assert model_text == "<think>x</think><|im_end|>  " + CALL + " <|im_end|>391<|im_end|>"


def test_episodes_that_keep_running_into_the_token_limit_are_stopped():
    from tooltune.rollout import check_token_record, trajectory_segments

    class Rambling(ScriptedPolicy):
        def generate(self, prompts, sampling, prompt_token_ids=None):
            return [Completion("<think>and so on", finish_reason="length") for _ in prompts]

    registry = ToolRegistry([multiply])
    t = TrajectoryCollector(Rambling([]), registry).collect_trajectory("q")
    assert len(t.steps) == 2 and t.metadata["stop_reason"] == "cut_off"
    assert "".join(text for text, _ in trajectory_segments(t)) == t.metadata["text"]
    t = TrajectoryCollector(Rambling([]), registry, stop_after_cutoffs=None).collect_trajectory("q")
    assert len(t.steps) == registry.config.max_turns

    class RamblingChars(CharPolicy):  # the same with a token record (cut off: no end token)
        def generate(self, prompts, sampling, prompt_token_ids=None):
            text = '<tool_call>{"name": "multiply", "arg'
            turn = Completion(text, self.encode(text), [-0.5] * len(text), "length")
            return [turn] * len(prompts)

    t = TrajectoryCollector(RamblingChars({}), registry).collect_trajectory("q")
    assert t.metadata["stop_reason"] == "cut_off" and t.steps[-1].observation  # an error
    check_token_record(t, RamblingChars({}), "json")  # the record is the re-rendered episode
