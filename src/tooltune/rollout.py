"""Rollouts: a policy acts, tools answer, and the episode becomes an `AgentTrajectory`.

`TrajectoryCollector.collect` runs a whole batch of episodes together: every unfinished
episode generates in one `policy.generate` call, the tool calls of the whole batch run
concurrently, and finished episodes leave the batch. Policies that can continue a turn cheaply
(`continues_turns`: the built-in model, Hugging Face models on the direct forward) generate in
pieces of `DECODE_CHUNK` tokens, and an episode whose turn ended runs its tools and starts its
next turn at the next piece, while the others are still writing: the batch stays full instead
of waiting, turn after turn, for its longest answer (continuous batching). For token policies
(those with `encode`), each episode's exact token ids, loss mask and sampling log-probs are
recorded as they happen and the same ids are fed back to the model, so training sees exactly
what sampling saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tooltune.allocator import KEEP_FREE_BYTES, keep_freed_pages, release_free_memory
from tooltune.call_grammar import CallGrammar
from tooltune.chat_format import (
    IM_END,
    assistant_header,
    build_system_prompt,
    format_observation,
    parse_action,
    parse_prompt,
    render_action,
    render_turn,
)
from tooltune.config import AgentConfig, ConfigError, TaskTier, as_group
from tooltune.native_template import (
    CLIP_KEY,
    NATIVE,
    NativeTemplate,
    TemplateError,
    template_of,
)
from tooltune.registry import ToolRegistry
from tooltune.types import AgentAction, AgentStep, AgentTrajectory, TokenRecord


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=lambda: [IM_END])
    seed: int | None = None


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (optional features of a policy's methods, such
    as ``token_logprobs(..., scored=)``, are used only where they exist)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@dataclass
class Completion:
    """One generated assistant turn. `text` excludes the stop string; token policies fill
    `token_ids` (including the stop token, so a training sequence closes the turn) and the
    sampling `logprobs` aligned with them."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" or "length"
    # How much SFT learns from the turn: 0 shows it without teaching it (an expert's
    # deliberate slip, `tasks.slips`), as OpenAI's fine-tuning format's per-message `weight`.
    weight: float = 1.0


@runtime_checkable
class Policy(Protocol):
    """Text in, text out: `generate` is all a policy must have (a scripted one, an expert).

    A token policy also has `encode`/`decode`, accepts the exact prompt ids in
    `prompt_token_ids`, and has `continues_turns` and `release_turns`, which the collector
    reads to batch turns continuously. Subclassing `Policy` gives their defaults: one generate
    call per turn, nothing kept between calls."""

    def generate(
        self,
        prompts: list[str],
        sampling: SamplingParams,
        prompt_token_ids: list[list[int]] | None = None,
    ) -> list[Completion]: ...

    # True promises that `generate` also takes `max_new_tokens` and `generated_before`, one
    # entry per prompt (this call's token budget, and the tokens of the same turn that earlier
    # calls wrote, which end the prompt), and continues the rows its last call finished without
    # running them again. The collector then writes turns in pieces of DECODE_CHUNK tokens, and
    # an episode whose turn ended starts its next turn while the others are still writing.
    continues_turns: bool = False

    def release_turns(self) -> None:
        """Drop what `generate` kept to continue turns. The collector calls it when its
        episodes are over: a 135M model's keys and values are GBs at batch 32, and training
        needs that memory."""


class TaskLike(Protocol):
    id: str
    prompt: str
    tier: TaskTier
    tools: list[str]


ToolSource = ToolRegistry | Callable[[str, list[str] | None], ToolRegistry]


class ScriptedPolicy(Policy):
    """Replays fixed assistant turns: `script[user prompt]` is the list of turns for that
    episode, and the turn index is read from the prompt itself, so batches work."""

    def __init__(self, script: dict[str, Sequence[str]] | Sequence[str]) -> None:
        self.script = script

    def generate(
        self,
        prompts: list[str],
        sampling: SamplingParams,
        prompt_token_ids: list[list[int]] | None = None,
    ) -> list[Completion]:
        out = []
        for prompt in prompts:
            messages = parse_prompt(prompt)
            turn = sum(1 for m in messages if m["role"] == "assistant" and m["content"])
            if isinstance(self.script, dict):
                user = next((m["content"] for m in messages if m["role"] == "user"), "")
                turns = self.script.get(user, [])
            else:
                turns = self.script
            out.append(Completion(turns[turn] if turn < len(turns) else "I cannot answer."))
        return out


# Tokens a continuing policy generates per call before the batch is re-formed: small enough that
# episodes rejoin soon after their turn ends, large enough that re-forming (a cached one-token
# prefill per row) stays a small share of the decoding.
DECODE_CHUNK = 32


def call_seed(seed: int, call: int) -> int:
    """The sampling seed of a collection's `call`-th generate call: hashed, so the calls of
    collections with neighbouring seeds (GRPO steps) never share a random stream."""
    digest = hashlib.blake2b(f"{seed}:{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class _Episode:
    trajectory: AgentTrajectory
    task: Any
    registry: ToolRegistry
    text: str  # the whole conversation so far, ending in an open assistant turn
    tokens: TokenRecord | None
    done: bool = False
    cutoffs: int = 0  # consecutive turns that ran into max_new_tokens
    turns: int = 0  # completed turns
    # the turn being written, when it is generated in pieces
    partial_ids: list[int] = field(default_factory=list)
    partial_logprobs: list[float] = field(default_factory=list)
    grammar: CallGrammar | None = None  # its calls' grammar, where calls are constrained


class TrajectoryCollector:
    """Collect agent trajectories (the seed's loop, batched)."""

    def __init__(
        self,
        policy: Policy,
        tools: ToolSource,
        config: AgentConfig | None = None,
        *,
        sampling: SamplingParams | None = None,
        tool_style: str = "json",
        verifier: Callable[[Any, AgentTrajectory], bool] | None = None,
        reward_fn: Callable[[AgentTrajectory, Any], float] | None = None,
        stop_after_cutoffs: int | None = 2,
        constrained_calls: bool = False,
    ) -> None:
        """`stop_after_cutoffs`: end an episode after that many consecutive turns cut off at
        `max_new_tokens` (a model that never closes its turn is not going to; an untrained one
        would otherwise burn every remaining turn at full length). None: never.
        `constrained_calls`: greedy decoding writes only calls that the episode's tools accept
        (`tooltune.call_grammar`): an offered name, its declared arguments of their types."""
        self.policy = policy
        self.tools = tools
        self.config = config or AgentConfig()
        self.sampling = sampling or SamplingParams(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_new_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
        )
        self.tool_style = tool_style
        self.verifier = verifier
        self.reward_fn = reward_fn
        self.stop_after_cutoffs = stop_after_cutoffs
        self.token_mode = callable(getattr(policy, "encode", None))
        self.native = self._native_template()
        if self.native is not None:  # the model's turns end as its template ends them
            self.sampling = dataclasses.replace(self.sampling, stop=[self.native.end_of_turn])
        self._end = self.native.end_of_turn if self.native is not None else IM_END
        self._im_end_id = policy.encode(self._end)[-1] if self.token_mode else None
        self.constrained_calls = constrained_calls
        hermes = self.native is None or self.native.family.name == "hermes"
        if constrained_calls and not (
            self.token_mode and hermes and self.sampling.temperature == 0
            and accepts_keyword(policy.generate, "grammars")
        ):  # fmt: skip
            raise ConfigError(  # a ValueError: the CLI prints it as one line
                "constrained_calls needs a token policy decoding greedily (temperature 0) that "
                "writes <tool_call>{json}</tool_call> (tooltune's format, or a Hermes/Qwen chat "
                "template)"
            )

    def _native_template(self) -> NativeTemplate | None:
        """The policy's own chat template for the native tool style. A text policy without a
        tokenizer (a scripted expert) reads and writes tooltune's format instead: its episodes
        are structured, and SFT renders them through the template afterwards. A template that
        cannot be used (no tools, unknown call format, not prefix-stable) is refused here, at
        start, with the reason."""
        if self.tool_style != NATIVE:
            return None
        if not self.token_mode and getattr(self.policy, "tokenizer", None) is None:
            self.tool_style = "json"
            return None
        return template_of(self.policy, self.config.max_observation_chars)

    # -- the seed's single-episode API ---------------------------------------------------------
    def collect_trajectory(
        self, task: str | TaskLike, tier: TaskTier = TaskTier.SIMPLE
    ) -> AgentTrajectory:
        return self.collect([task], tier=tier)[0]

    # -- batched collection --------------------------------------------------------------------
    @keep_freed_pages()  # every call frees, then needs again, caches of similar sizes
    def collect(
        self,
        tasks: Iterable[str | TaskLike],
        num_samples: int = 1,
        tier: TaskTier = TaskTier.SIMPLE,
        *,
        max_active: int | None = None,
        on_finish: Callable[[AgentTrajectory], None] | None = None,
    ) -> list[AgentTrajectory]:
        """Roll out `num_samples` episodes per task; results are grouped task by task.

        `max_active`: at most that many episodes run at once, and a finished episode's place
        goes to the next one waiting, so a long list of tasks keeps the batch full to its end
        instead of waiting, batch after batch, for each batch's longest episode. None: all at
        once. `on_finish(trajectory)` runs as each episode ends (a progress bar)."""
        encoded: dict[str, list[int]] = {}  # a task's samples share their opening's tokens
        waiting = iter([task for task in tasks for _ in range(num_samples)])
        if max_active is not None and max_active < 1:
            raise ValueError(
                f"max_active must be at least 1 (or None: all at once), got {max_active}"
            )
        limit = max_active
        episodes: list[_Episode] = []
        running: list[_Episode] = []
        try:
            for call in itertools.count():
                running = [e for e in running if not self._ended(e, on_finish)]
                while limit is None or len(running) < limit:
                    task = next(waiting, None)
                    if task is None:
                        break
                    episode = self._start(task, tier, encoded)
                    episodes.append(episode)
                    if not self._ended(episode, on_finish):
                        running.append(episode)
                if not running:
                    break
                ended = self._generate(running, call)
                release_free_memory(KEEP_FREE_BYTES)  # caches are bounded (`max_cache_bytes`)
                if ended:
                    self._turn(ended)
        finally:
            for e in episodes:
                e.registry.close()
            if self.token_mode:
                self.policy.release_turns()
        return [e.trajectory for e in episodes]

    def _ended(
        self, episode: _Episode, on_finish: Callable[[AgentTrajectory], None] | None
    ) -> bool:
        """Whether the episode is over (stopping it at its turn or length limit); an episode
        that just ended is scored, and its tools released, here."""
        if not episode.done and not episode.partial_ids:  # mid-turn: room was checked at start
            if episode.turns >= self.config.max_turns:
                self._stop(episode, "max_turns")
            elif not self._has_room(episode):
                self._stop(episode, "max_trajectory_len")
        if not episode.done:
            return False
        self._finish(episode)
        episode.registry.close()
        if on_finish is not None:
            on_finish(episode.trajectory)
        return True

    def _start(
        self, task: str | TaskLike, tier: TaskTier, encoded: dict[str, list[int]]
    ) -> _Episode:
        episode_id = uuid.uuid4().hex[:12]
        if isinstance(task, str):
            prompt, task_id, tool_names = task, None, None
        else:
            prompt, task_id, tool_names, tier = task.prompt, task.id, task.tools, task.tier
        if isinstance(self.tools, ToolRegistry):
            registry = self.tools.subset(tool_names) if tool_names else self.tools
        else:
            registry = self.tools(episode_id, tool_names)
        trajectory = AgentTrajectory(
            prompt=prompt,
            task_tier=as_group(tier),
            task_id=task_id,
            tools=registry.openai_tools(),
            metadata={"episode_id": episode_id},
        )
        if self.native is not None:
            text = self.native.opening(trajectory)
            trajectory.metadata[CLIP_KEY] = self.config.max_observation_chars  # for re-rendering
        else:
            text = opening_text(trajectory, self.tool_style)
        tokens = None
        if self.token_mode:
            tokens = TokenRecord()
            if text not in encoded:
                encoded[text] = self.policy.encode(text)
            tokens.extend(encoded[text], generated=False)
        grammar = CallGrammar(trajectory.tools) if self.constrained_calls else None
        return _Episode(trajectory, task, registry, text, tokens, grammar=grammar)

    def _has_room(self, episode: _Episode) -> bool:
        used = len(episode.tokens) if episode.tokens is not None else len(episode.text) // 4
        return used + self.sampling.max_new_tokens <= self.config.max_trajectory_len

    def _generate(self, active: list[_Episode], call: int) -> list[tuple[_Episode, Completion]]:
        """One generate call for the active episodes; returns those whose turn ended, each
        with the whole turn's completion. A continuing policy writes at most DECODE_CHUNK
        tokens per call, so a turn may take several calls."""
        sampling = self.sampling
        if sampling.seed is not None and call:  # every call draws fresh samples
            sampling = dataclasses.replace(sampling, seed=call_seed(sampling.seed, call))
        grammars = {"grammars": [e.grammar for e in active]} if self.constrained_calls else {}
        if not (self.token_mode and self.policy.continues_turns):
            prompt_ids = [e.tokens.ids for e in active] if self.token_mode else None
            completions = self.policy.generate(
                [e.text for e in active], sampling, prompt_ids, **grammars
            )
            return list(zip(active, completions, strict=True))
        wanted = [sampling.max_new_tokens - len(e.partial_ids) for e in active]
        pieces = self.policy.generate(
            [e.text for e in active],
            sampling,
            [e.tokens.ids + e.partial_ids for e in active],
            max_new_tokens=[min(DECODE_CHUNK, w) for w in wanted],
            generated_before=[e.partial_ids for e in active],
            **grammars,
        )
        ended = []
        for episode, piece, left in zip(active, pieces, wanted, strict=True):
            episode.partial_ids += piece.token_ids
            episode.partial_logprobs += piece.logprobs
            short = len(piece.token_ids) < min(DECODE_CHUNK, left)  # out of context
            if piece.finish_reason == "stop" or short or len(piece.token_ids) >= left:
                reason = "stop" if piece.finish_reason == "stop" else "length"
                turn = Completion(
                    self.policy.decode(episode.partial_ids),
                    episode.partial_ids,
                    episode.partial_logprobs,
                    reason,
                )
                episode.partial_ids, episode.partial_logprobs = [], []
                ended.append((episode, turn))
        return ended

    def _turn(self, ended: list[tuple[_Episode, Completion]]) -> None:
        """The episodes whose turn ended: record the turns, run their tool calls (all of them
        concurrently), and open the next turn with the results."""
        active = [episode for episode, _ in ended]
        actions, weights = [], []
        for episode, completion in ended:
            turn = episode.turns
            episode.turns += 1
            text = completion.text
            if episode.tokens is not None:
                ids = completion.token_ids
                episode.tokens.extend(ids, generated=True, logprobs=completion.logprobs)
                closed = bool(ids) and ids[-1] == self._im_end_id
                if not closed:  # cut off, or ended by another end token: close the turn for it
                    episode.tokens.extend(self.policy.encode(self._end), generated=False)
                # the text of the ids themselves, so text and tokens never disagree (an
                # end-of-text token, say, is part of what the model wrote and will see again)
                text = self.policy.decode(ids[:-1] if closed else ids)
            known, prefix = episode.registry.names, f"call_{turn}"
            if self.native is not None:
                action = self.native.parse(text, known, prefix)
                if text != self._native_text(episode.trajectory, action):
                    action.raw = text
            else:
                action = parse_action(text, known_tools=known, id_prefix=prefix)
                if text != render_action(action):
                    action.raw = text
            actions.append(action)
            weights.append(completion.weight)
            episode.text += text + self._end
            episode.cutoffs = episode.cutoffs + 1 if completion.finish_reason == "length" else 0

        # every episode's calls start before any is waited for: the batch's calls run at once
        pairs = list(zip(active, actions, strict=True))
        waits = [episode.registry.start_many(action.tool_calls) for episode, action in pairs]
        all_responses = [wait() for wait in waits]

        for (episode, action), responses, weight in zip(pairs, all_responses, weights, strict=True):
            observation = None
            if responses:
                observation = format_observation(responses, self.config.max_observation_chars)
            episode.trajectory.steps.append(
                AgentStep(
                    action=action, observation=observation, tool_responses=responses, weight=weight
                )
            )
            if action.type == "respond":
                episode.trajectory.final_answer = action.content
                self._stop(episode, "answer")
                continue
            # the tool turn follows even when the episode stops here (as after its last turn),
            # so the text and the token record are what `trajectory_segments` re-renders
            if self.native is not None:
                follow = self.native.follow(episode.trajectory, responses)
            else:
                follow = follow_text(observation)
            episode.text += follow
            if episode.tokens is not None:
                episode.tokens.extend(self.policy.encode(follow), generated=False)
            if self.stop_after_cutoffs and episode.cutoffs >= self.stop_after_cutoffs:
                self._stop(episode, "cut_off")

    def _native_text(self, trajectory: AgentTrajectory, action: AgentAction) -> str | None:
        """The template's rendering of `action`; None when it cannot render it (Llama 3.1's
        template refuses two calls in one turn): the model's text is then kept as it is."""
        try:
            return self.native.assistant_text(trajectory, action)
        except TemplateError:
            return None

    def _stop(self, episode: _Episode, reason: str) -> None:
        episode.done = True
        episode.trajectory.metadata["stop_reason"] = reason

    def _finish(self, episode: _Episode) -> None:
        trajectory = episode.trajectory
        trajectory.tokens = episode.tokens
        trajectory.metadata["text"] = episode.text
        if self.verifier is not None and not isinstance(episode.task, str):
            trajectory.success = bool(self.verifier(episode.task, trajectory))
        if self.reward_fn is not None:
            trajectory.total_reward = float(self.reward_fn(trajectory, episode.task))


# --------------------------------------------------------------------------------------------
# The exact text of an episode, piece by piece (shared by collection and SFT tokenisation)
# --------------------------------------------------------------------------------------------


def opening_text(trajectory: AgentTrajectory, tool_style: str = "json") -> str:
    """System turn with the offered tools, the user turn, and the open assistant turn."""
    system = build_system_prompt(trajectory.tools, style=tool_style)
    return (
        render_turn("system", system) + render_turn("user", trajectory.prompt) + assistant_header()
    )


def follow_text(observation: str | None) -> str:
    """What follows a closed assistant turn: the tool turn (if any) and the next header."""
    text = "\n"
    if observation is not None:
        text += render_turn("tool", observation)
    return text + assistant_header()


def trajectory_segments(
    trajectory: AgentTrajectory, tool_style: str = "json", template: NativeTemplate | None = None
) -> list[tuple[str, bool]]:
    """(text, taught) pieces whose concatenation is the episode's text as the collector built
    it. The model's pieces are each turn's text plus the closing `<|im_end|>` (the template's
    end of turn for the native style, which needs the model's `template`), taught unless the
    step's `weight` is 0."""
    if tool_style == NATIVE:
        if template is None:
            raise TemplateError(
                "tool style native renders through a Hugging Face model's chat template; pass "
                "the model's template (native_template.template_of(policy)), or use tool_style "
                "names, compact or json for a model without one (the built-in model)"
            )
        return template.segments(trajectory)
    pieces = [(opening_text(trajectory, tool_style), False)]
    for step in trajectory.steps:
        action = step.action
        text = action.raw if action.raw is not None else render_action(action)
        pieces.append((text + IM_END, step.weight > 0))
        if action.type == "respond":
            break
        pieces.append((follow_text(step.observation), False))
    return pieces


def tokenize_trajectory(
    trajectory: AgentTrajectory,
    encode: Callable[[str], list[int]],
    tool_style: str = "json",
    template: NativeTemplate | None = None,
) -> TokenRecord:
    """Token record for a trajectory that was not sampled from a token policy (an expert's
    demonstration, a JSONL of chat messages): mask 1 on the assistant's turns only. For the
    native style the template is, without `template`, that of the policy `encode` belongs to."""
    if tool_style == NATIVE and template is None:
        template = template_of(getattr(encode, "__self__", None))
    record = TokenRecord()
    for text, generated in trajectory_segments(trajectory, tool_style, template):
        record.extend(encode(text), generated=generated)
    return record


def check_token_record(trajectory: AgentTrajectory, policy: Any, tool_style: str = "json") -> None:
    """Prove there is no retokenisation drift, or raise `ValueError` saying where it is.

    The recorded ids must decode to the re-rendered trajectory, every run of the model's own
    tokens must decode to what the model wrote, and every other run must be exactly what encoding
    its text gives, so training on the record scores the tokens sampling produced."""
    record = trajectory.tokens
    if record is None:
        raise ValueError("the trajectory has no token record")
    if not len(record.ids) == len(record.mask) == len(record.logprobs):
        raise ValueError("ids, mask and logprobs differ in length")
    template = template_of(policy) if tool_style == NATIVE else None
    text = "".join(piece for piece, _ in trajectory_segments(trajectory, tool_style, template))
    if policy.decode(record.ids) != text:
        raise ValueError("the recorded ids do not decode to the re-rendered trajectory")
    start = 0
    for end in range(1, len(record.ids) + 1):
        if end < len(record.ids) and record.mask[end] == record.mask[start]:
            continue
        run = record.ids[start:end]
        if record.mask[start] == 0 and policy.encode(policy.decode(run)) != run:
            raise ValueError(f"tokens {start}-{end} are not the encoding of their own text")
        if record.mask[start] == 0 and any(lp != 0.0 for lp in record.logprobs[start:end]):
            raise ValueError(f"tokens {start}-{end} are not the model's but carry log-probs")
        start = end
