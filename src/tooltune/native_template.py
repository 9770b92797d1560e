"""A Hugging Face model's own chat template as its prompt: the ``native`` tool style.

A pretrained chat model (Qwen2.5/Qwen3, Llama 3.x, Hermes-style) was taught tool calling in its
own template; prompting it in tooltune's format throws that away. With ``tool_style="native"``
the collector and SFT render every conversation through ``tokenizer.apply_chat_template(
messages, tools=...)`` and read the model's calls in that template's format. tooltune's own
format stays the default, and the only one for the built-in model and for tokenizers whose
template cannot render tools (SmolLM2-135M).

Token-exact, as tooltune's format is: the ids of a turn are only ever extended, never
re-tokenised. The opening (user turn, tools, generation prompt) is one rendering; the model's
turn is its own sampled ids; what follows a turn (the rest of the closed turn after its
end-of-turn marker, the tool results, the next generation prompt) is the text a rendering with
the tool messages adds to the rendering without them. That is only right for a template that is
*prefix-stable*: rendering the conversation with one more turn must start with the previous
rendering. A template that rewrites earlier turns (Qwen3 with ``enable_thinking=False`` renders
an empty ``<think>`` block into the prompt but drops it from earlier turns) would have the model
trained on prompts its template never produces, so `NativeTemplate` checks a probe conversation
when it is made and refuses such a template with the place where it rewrites.

Calls are parsed per template family, detected from the template's text: ``hermes``
(``<tool_call>{json}</tool_call>``: Qwen2.5, Qwen3, Hermes, SmolLM3) and ``llama3`` (a JSON object
``{"name": ..., "parameters": ...}`` as the whole turn). Parsing never raises, as in
`chat_format`; model text is only ever read as JSON.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from tooltune.chat_format import parse_action, parse_call
from tooltune.config import ConfigError
from tooltune.messages import response_content
from tooltune.types import AgentAction, AgentStep, AgentTrajectory, ToolCall, ToolResponse

NATIVE = "native"
CLIP_KEY = "max_observation_chars"  # trajectory metadata: the clipping its tool results had
FIX = "use tool_style compact or json (tooltune's own format) for this model"


class TemplateError(ConfigError):
    """A chat template tooltune cannot prompt natively; the message says why and the fix."""


@dataclass(frozen=True)
class Family:
    """How a template family writes calls: the string that ends an assistant turn, and the
    parser of the model's text into an action."""

    name: str
    end_of_turn: str
    parse: Callable[[str, Collection[str] | None, str], AgentAction]


def _parse_hermes(text: str, known: Collection[str] | None, id_prefix: str) -> AgentAction:
    return parse_action(text, known_tools=known, id_prefix=id_prefix)


_PYTHON_TAG = "<|python_tag|>"
_LLAMA_ENDS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def _parse_llama3(text: str, known: Collection[str] | None, id_prefix: str) -> AgentAction:
    """A Llama 3.x turn is either a JSON call (several may follow one another, separated by
    ``;`` or whitespace) or the answer. Text that starts like a call but is not valid JSON is a
    failed call, so the model learns from the registry's error."""
    for end in _LLAMA_ENDS:
        text = text.split(end, 1)[0]
    body = text.replace(_PYTHON_TAG, "").strip()
    if not body.startswith("{"):
        return AgentAction("respond" if body else "think", body)
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    position = 0
    while position < len(body):
        call_id = f"{id_prefix}_{len(calls)}"
        try:
            data, end = decoder.raw_decode(body, position)
        except (json.JSONDecodeError, RecursionError):
            calls.append(_failed(parse_call(body[position:], call_id, known), body[position:]))
            break
        if not isinstance(data, dict) or "name" not in data:
            if calls:  # text after the calls: the model's own business, kept in raw
                break
            return AgentAction("respond", body)
        piece = body[position:end]
        call = parse_call(piece, call_id, known)
        calls.append(_failed(call, piece) if call.parse_error else call)
        position = end
        while position < len(body) and body[position] in "; \n\t":
            position += 1
    return AgentAction("tool_call", "", calls)


def _failed(call: ToolCall, raw: str) -> ToolCall:
    call.raw = raw  # the text as the model wrote it, without tooltune's <tool_call> tags
    return call


FAMILIES = {
    "hermes": Family("hermes", "<|im_end|>", _parse_hermes),
    "llama3": Family("llama3", "<|eot_id|>", _parse_llama3),
}


def detect_family(template: str) -> Family:
    """The family whose call format `template` renders; `TemplateError` for an unknown one."""
    if "<tool_call>" in template and "<|im_end|>" in template:
        return FAMILIES["hermes"]
    if "<|eot_id|>" in template and '"parameters": ' in template:
        return FAMILIES["llama3"]
    raise TemplateError(
        "the tokenizer's chat template writes tool calls in a format tooltune does not know "
        "(it knows Hermes/Qwen <tool_call> JSON and Llama 3.x JSON); " + FIX
    )


# -- the probe: a conversation shaped like an episode -------------------------------------------
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "tooltune_probe",
        "description": "Look a word up.",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string", "description": "The word."}},
            "required": ["word"],
        },
    },
}


def _probe_trajectory() -> AgentTrajectory:
    """Two call turns (one with thinking, one without) and an answer: what an episode is."""
    steps = []
    for i, thinking in enumerate(("first I look it up", "")):
        call = ToolCall(f"call_{i}", "tooltune_probe", {"word": f"probe{i}"})
        action = AgentAction("tool_call", "", [call], thinking=thinking)
        response = ToolResponse(f"call_{i}", True, {"found": i}, name="tooltune_probe")
        steps.append((action, [response]))
    answer = AgentAction("respond", "It is 1.", thinking="both found")
    trajectory = AgentTrajectory(prompt="What is probe?", task_tier="probe", tools=[_PROBE_TOOL])
    trajectory.steps = [AgentStep(a, tool_responses=r) for a, r in steps]
    trajectory.steps.append(AgentStep(answer))
    return trajectory


class NativeTemplate:
    """A tokenizer's chat template, checked once: it renders tools, its family is known, and it
    is prefix-stable on a probe episode. Renders an episode in pieces the collector extends."""

    def __init__(
        self,
        tokenizer: Any,
        max_observation_chars: int = 2000,
        **template_kwargs: Any,
    ) -> None:
        """`template_kwargs` go to every rendering (``enable_thinking=False`` for Qwen3, say)."""
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # named templates: the tool-use one renders tools
            source = source.get("tool_use") or source.get("default")
        if not isinstance(source, str) or not source.strip():
            raise TemplateError(
                "the tokenizer has no chat template to prompt with (tooltune's built-in model "
                f"has none: it takes tool_style names); {FIX}"
            )
        self.tokenizer = tokenizer
        self.source = source
        self.max_observation_chars = max_observation_chars
        self.kwargs = template_kwargs
        self.family = detect_family(source)
        self.end_of_turn = self.family.end_of_turn
        self._check_tools()
        self._check_prefix_stable()

    # -- rendering ----------------------------------------------------------------------------
    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], generation: bool
    ) -> str:
        """``apply_chat_template`` as text; a template error becomes a `TemplateError`."""
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                chat_template=self.source,
                add_generation_prompt=generation,
                tokenize=False,
                **self.kwargs,
            )
        except Exception as exc:  # jinja2's TemplateError, a raise_exception() in the template
            raise TemplateError(f"the chat template failed to render: {exc}") from exc
        return text if isinstance(text, str) else str(text)

    def _opening_messages(self, trajectory: AgentTrajectory) -> list[dict[str, Any]]:
        return [{"role": "user", "content": trajectory.prompt}]

    def opening(self, trajectory: AgentTrajectory) -> str:
        """The user turn with the offered tools, and the open assistant turn."""
        return self.render(self._opening_messages(trajectory), trajectory.tools, True)

    def assistant_text(self, trajectory: AgentTrajectory, action: AgentAction) -> str:
        """How the template writes `action` as the turn after the opening, without the
        end-of-turn marker: the text a model trained natively should write."""
        opening = self.opening(trajectory)
        messages = [*self._opening_messages(trajectory), assistant_message(action)]
        rendered = self.render(messages, trajectory.tools, False)
        if not rendered.startswith(opening):
            raise _unstable("an assistant turn does not continue its generation prompt",
                            opening, rendered)  # fmt: skip
        body = rendered[len(opening) :]
        end = body.rfind(self.end_of_turn)
        if end < 0:
            raise TemplateError(
                f"the chat template ends no assistant turn with {self.end_of_turn}; {FIX}"
            )
        return body[:end]

    def follow(self, trajectory: AgentTrajectory, responses: list[ToolResponse]) -> str:
        """What follows a closed assistant turn: the rest of that turn after its end-of-turn
        marker, the tool results, and the next generation prompt."""
        before = [*self._opening_messages(trajectory), _PLACEHOLDER]
        closed = self.render(before, trajectory.tools, False)
        limit = trajectory.metadata.get(CLIP_KEY, self.max_observation_chars)
        tools = self.tool_messages(responses, limit)
        after = self.render(before + tools, trajectory.tools, True)
        if not after.startswith(closed):
            raise _unstable("an assistant turn changes once tool results follow it",
                            closed, after)  # fmt: skip
        trailer = closed[closed.rfind(self.end_of_turn) + len(self.end_of_turn) :]
        return trailer + after[len(closed) :]

    def tool_messages(
        self, responses: list[ToolResponse], max_chars: int | None = None
    ) -> list[dict[str, Any]]:
        """One OpenAI ``tool`` message per response, clipped as tooltune's format clips."""
        limit = self.max_observation_chars if max_chars is None else int(max_chars)
        out = []
        for response in responses:
            content = response_content(response)
            if len(content) > limit:
                content = content[:limit] + f"... [{len(content) - limit} more characters cut]"
            out.append({"role": "tool", "tool_call_id": response.call_id,
                        "name": response.name, "content": content})  # fmt: skip
        return out

    def parse(self, text: str, known_tools: Collection[str] | None, id_prefix: str) -> AgentAction:
        """The model's text (without its end-of-turn marker) as an action; never raises."""
        return self.family.parse(text, known_tools, id_prefix)

    def segments(self, trajectory: AgentTrajectory) -> list[tuple[str, bool]]:
        """(text, taught) pieces of an episode, as the collector extends them: each model piece
        is the turn (what the model wrote, or the template's rendering of a demonstration's
        action) and the end-of-turn marker, taught unless the step's `weight` is 0."""
        pieces = [(self.opening(trajectory), False)]
        for step in trajectory.steps:
            action = step.action
            text = action.raw if action.raw is not None else self.assistant_text(trajectory, action)
            pieces.append((text + self.end_of_turn, step.weight > 0))
            if action.type == "respond":
                break
            pieces.append((self.follow(trajectory, step.tool_responses), False))
        return pieces

    # -- checks made once ---------------------------------------------------------------------
    def _check_tools(self) -> None:
        probe = _probe_trajectory()
        opening = self.opening(probe)
        if "tooltune_probe" not in opening:
            raise TemplateError(
                "the tokenizer's chat template does not render tools (the tool list given to "
                f"apply_chat_template(tools=...) is not in its prompt); {FIX}"
            )
        call = probe.steps[0].action
        if "tooltune_probe" not in self.assistant_text(probe, call):
            raise TemplateError(
                f"the tokenizer's chat template does not render an assistant's tool_calls; {FIX}"
            )

    def _check_prefix_stable(self) -> None:
        """The probe episode extended piece by piece must be what the template renders for the
        whole conversation at once: otherwise the template rewrites earlier turns."""
        probe = _probe_trajectory()
        built = "".join(text for text, _ in self.segments(probe))
        messages = [*self._opening_messages(probe), *conversation_messages(probe, self)]
        whole = self.render(messages, probe.tools, False)
        if not whole.startswith(built):
            raise _unstable("the whole episode renders earlier turns otherwise", built, whole)
        # the same text in pieces should be the same tokens as at once (what a server sends)
        encode = self._encode
        pieces = [i for text, _ in self.segments(probe) for i in encode(text)]
        self.token_stable = pieces == encode(built)
        if not self.token_stable:
            warnings.warn(
                "the chat template's pieces tokenise differently from its whole rendering: "
                "training uses the pieces' ids exactly, but a server that re-tokenises the "
                "rendered conversation will give the model slightly different ids",
                stacklevel=3,
            )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


_PLACEHOLDER = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "tooltune_probe", "arguments": {"word": "probe"}}},
    ],
}  # fmt: skip


def assistant_message(action: AgentAction) -> dict[str, Any]:
    """An action as the OpenAI assistant message a template renders (``tool_calls`` only when
    there are calls: Llama 3.1's template writes "No tool calls found." for an empty list)."""
    message: dict[str, Any] = {"role": "assistant", "content": action.content}
    if action.thinking:
        message["reasoning_content"] = action.thinking
    if action.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in action.tool_calls
        ]  # fmt: skip
    return message


def conversation_messages(
    trajectory: AgentTrajectory, template: NativeTemplate
) -> list[dict[str, Any]]:
    """The steps of an episode as assistant and tool messages."""
    out: list[dict[str, Any]] = []
    for step in trajectory.steps:
        out.append(assistant_message(step.action))
        out.extend(template.tool_messages(step.tool_responses))
    return out


def _unstable(what: str, expected: str, got: str) -> TemplateError:
    """The refusal of a template that is not prefix-stable, showing where renderings part."""
    i = next((k for k, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
    i = min(len(expected), len(got)) if i is None else i
    return TemplateError(
        f"the chat template is not prefix-stable: {what} (at character {i} of a probe episode "
        f"the turns as extended read {expected[i : i + 40]!r}, the template renders "
        f"{got[i : i + 40]!r}). tooltune extends each turn's tokens, never re-rendering "
        "earlier turns, so it would train the model on prompts its template never produces: "
        "it refuses the template rather than split episodes at the break (Qwen3's template, "
        "which drops an empty <think> block from earlier turns, is one such); " + FIX
    )


# -- finding a policy's template ------------------------------------------------------------------
_CACHE: dict[int, NativeTemplate] = {}


def template_of(policy: Any, max_observation_chars: int = 2000) -> NativeTemplate:
    """The checked template of `policy`'s tokenizer (made once per tokenizer and template)."""
    tokenizer = getattr(policy, "tokenizer", None)
    if tokenizer is None:
        raise TemplateError(
            "tool style native prompts through a Hugging Face tokenizer's chat template, and "
            f"this policy ({type(policy).__name__}) has no tokenizer; use tool_style names, "
            "compact or json"
        )
    cached = _CACHE.get(id(tokenizer))
    if (
        cached is not None
        and cached.tokenizer is tokenizer
        and cached.source == getattr(tokenizer, "chat_template", None)
        and cached.max_observation_chars == max_observation_chars
    ):
        return cached
    template = NativeTemplate(tokenizer, max_observation_chars)
    if len(_CACHE) > 8:
        _CACHE.clear()
    _CACHE[id(tokenizer)] = template
    return template
