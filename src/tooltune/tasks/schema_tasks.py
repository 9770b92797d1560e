"""Schema tasks: call functions a model reads about for the first time, checked by BFCL's rules.

A task offers 1-5 functions from the split's pool (`tooltune.tasks.schema_gen`) and asks, in
words, for one call (tier `simple`, template `schema_simple`), several in one turn (tier
`multi_tool_par`, template `schema_parallel`: 2-4 calls of the same function, often asked as
one request that lists the values of the one argument that varies, as BFCL's parallel questions
do, or as the first call and "the same with ... instead" for the others; 2-3 different
functions; or two functions, one of them called once per listed value, as many of BFCL's
parallel_multiple questions ask), or for something none of them does (tier `no_tool`, template
`schema_irrelevant`: the right episode makes no call and says it cannot, as BFCL's
`irrelevance` category asks; without these a model trained on the others learns to call
whatever it is offered). The question states every value the call needs, so the right call is
determined: the required arguments and some optional ones, in the words of the parameters'
descriptions. The ground truth is BFCL's possible-answer form (`{function: {param: [allowed]}}`,
"" marking a parameter that may be left out) and the check is the same AST checker
(`tooltune.tasks.bfcl`), on the first turn that calls, plus a final answer that reports the
confirmation id each call returned (`tooltune.tools.schema_functions`).

The kind is opt-in: `splits.sample_tasks(..., schema_share=x)` (or the config key
`schema_task_share`) turns that share of the simple, parallel and no-tool tasks into schema
tasks; at 0, the default, sampling is exactly what it was without them.
"""

from __future__ import annotations

import random
from typing import Any

from tooltune.config import TaskTier
from tooltune.registry import ToolDefinition
from tooltune.tasks.schema_gen import Param, SchemaFunction, draw_value, find_functions, pool_of
from tooltune.tasks.task import Task
from tooltune.tasks.templates.plan import op, plan, step, x_key
from tooltune.tools.schema_functions import call_id, make_schema_tool

SCHEMA_TIERS = (TaskTier.SIMPLE, TaskTier.MULTI_TOOL_PAR, TaskTier.NO_TOOL)
SCHEMA_SPLITS = ("train", "validation", "test")  # not heldout_tools: that split is the registry's
SCHEMA_TEMPLATES = {TaskTier.SIMPLE: "schema_simple", TaskTier.MULTI_TOOL_PAR: "schema_parallel",
                    TaskTier.NO_TOOL: "schema_irrelevant"}  # fmt: skip
OPENERS = ["Please {vp}.", "Could you {vp}?", "I need you to {vp}.", "Can you {vp}?",
           "{Vp}.", "I'd like to {vp}.", "Help me {vp}, please."]  # fmt: skip
PLURAL = {"readings", "coordinates", "dimensions", "tags", "notifications", "record numbers",
          "flexible terms", "numbers", "decimal places"}  # fmt: skip
VARIABLE_KINDS = ("string", "integer", "number", "enum")  # what a parallel request can list
VARIED = ["{request}, once for each {phrase}: {values}",
          "{request} for each of these values of the {phrase}: {values}",
          "{request}, one call per {phrase} ({values})"]  # fmt: skip
# A later call of the same function asked as a change of the first ("... with a sample size of
# 50. And can you do the same but for a sample size of 150 instead?"), as many of BFCL's are
SAME_BUT = ["Then do the same with {changes} instead.", "Do it again, but with {changes}.",
            "And the same for {changes}.", "Can you do the same but with {changes} instead?",
            "Repeat that with {changes}."]  # fmt: skip
PAIRS = ["First, {a}. Then also {b}.", "Please {a}, and {b}.", "Two things: {a}; and {b}.",
         "Could you {a}? Also {b}."]  # fmt: skip


def _number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _say(value: Any, param: Param, listed: bool) -> str:
    """A value as the question writes it (arrays in brackets when clauses are comma-joined)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list):
        items = [_say(v, param, listed) for v in value]
        text = ", ".join(items[:-1]) + f" and {items[-1]}"
        return text if listed else f"({text})"
    if isinstance(value, dict):
        parts = [f"{f.phrase} {_say(value[f.name], f, True)}" for f in param.fields
                 if f.name in value]  # fmt: skip
        return "(" + ", ".join(parts) + ")"
    text = str(value)
    return f'"{text}"' if " " in text else text


def _clause(param: Param, value: Any, style: int, r: random.Random) -> str:
    if style == 1:  # "- name: value" lists
        return f"{param.phrase}: {_say(value, param, True)}"
    verb = "are" if param.phrase in PLURAL else "is"
    if isinstance(value, bool):
        on = "on" if value else "off"
        if style == 2:
            return f"the {param.phrase} {verb} {on}"
        return r.choice([f"{param.phrase} turned {on}", f"the {param.phrase} set to {on}"])
    said = _say(value, param, False)
    if style == 2:
        return f"the {param.phrase} {verb} {said}"
    return r.choice([f"the {param.phrase} {said}", f"{param.phrase} {said}",
                     f"{said} as the {param.phrase}", f"the {param.phrase} set to {said}"])  # fmt: skip


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _draw_object(r: random.Random, param: Param) -> tuple[dict, dict]:
    """(value, possible answer) of an object: required fields always, optional ones often."""
    value, allowed = {}, {}
    for f in param.fields:
        if f.required or r.random() < 0.5:
            value[f.name] = draw_value(r, f.concept)
            allowed[f.name] = [value[f.name]]
        else:
            allowed[f.name] = [""]
    return value, allowed


def draw_call(r: random.Random, function: SchemaFunction) -> tuple[dict, dict, str]:
    """(arguments, possible answer, request in words) for one call of `function`."""
    arguments, truth, stated = _draw_arguments(r, function)
    return arguments, truth, _request(r, function, stated)


def _draw_arguments(r: random.Random, function: SchemaFunction
                    ) -> tuple[dict, dict, list[tuple[Param, Any]]]:  # fmt: skip
    """(arguments, possible answer, the (parameter, value) pairs the question states)."""
    arguments: dict[str, Any] = {}
    truth: dict[str, list] = {}
    stated: list[tuple[Param, Any]] = []
    for param in function.params:
        if not param.required and r.random() < 0.5:  # left unsaid: may be left out
            truth[param.name] = [param.default, ""] if param.has_default else [""]
            continue
        if param.fields:
            value, allowed = _draw_object(r, param)
            truth[param.name] = [allowed]
        else:
            value = draw_value(r, param.concept)
            truth[param.name] = _allowed(param, value)
        arguments[param.name] = value
        stated.append((param, value))
    return arguments, truth, stated


def _allowed(param: Param, value: Any) -> list:
    """The possible answers for a stated scalar: the value, or leaving out a default it equals."""
    if not param.required and param.has_default and value == param.default:
        return [value, ""]
    return [value]


def _request(r: random.Random, function: SchemaFunction, stated: list[tuple[Param, Any]]) -> str:
    """The request in words: verb, noun and the stated values in one of three styles."""
    stated = list(stated)
    r.shuffle(stated)
    style = r.choice([0, 0, 1, 2])
    article = "the" if function.noun.endswith("s") or r.random() < 0.5 else "a"
    article = "an" if article == "a" and function.noun[0] in "aeiou" else article
    request = f"{function.verb} {article} {function.noun}"
    if stated:
        clauses = [_clause(p, v, style, r) for p, v in stated]
        if style == 1:
            request += " (" + "; ".join(clauses) + ")"
        elif style == 2:
            request += " where " + _join(clauses)
        else:
            request += " with " + _join(clauses)
    return request


def _varied_calls(r: random.Random, function: SchemaFunction, n: int
                  ) -> tuple[list[tuple], str] | None:  # fmt: skip
    """`n` calls of one function that share every stated value but one, and the request that
    lists that one's values ("... once for each city: Lisbon, Osaka and Lima"), the way BFCL's
    parallel questions ask; None when the function has no scalar to vary or too few values."""
    arguments, truth, stated = _draw_arguments(r, function)
    scalars = [p for p, _ in stated if p.concept.kind in VARIABLE_KINDS and p.phrase not in PLURAL]
    if not scalars:
        return None
    param = r.choice(scalars)
    values: list[Any] = []
    for _ in range(20 * n):
        value = draw_value(r, param.concept)
        if value not in values:
            values.append(value)
        if len(values) == n:
            break
    calls = [({**arguments, param.name: v}, {**truth, param.name: _allowed(param, v)}, "")
             for v in values]  # fmt: skip
    if len(values) < n or len({call_id(function.doc, c[0]) for c in calls}) < n:
        return None
    request = _request(r, function, [(p, v) for p, v in stated if p is not param])
    listed = _join([_say(v, param, True) for v in values])
    return calls, r.choice(VARIED).format(request=request, phrase=param.phrase, values=listed)


def _changed_calls(r: random.Random, function: SchemaFunction, n: int
                   ) -> tuple[list[tuple], str] | None:  # fmt: skip
    """`n` calls of one function: the first asked in full, each later one as the one before
    with one or two stated values changed ("Then do the same with the size 4000 and the city
    Lima instead."), so a call repeats every value the change leaves alone. None when the
    function has no scalar to change."""
    arguments, truth, stated = _draw_arguments(r, function)
    scalars = [p for p, _ in stated if p.concept.kind in VARIABLE_KINDS and p.phrase not in PLURAL]
    if not scalars:
        return None
    calls = [(arguments, truth, "")]
    sentences = [_sentence(_request(r, function, stated), r)]
    for _ in range(20 * n):
        if len(calls) == n:
            break
        changed = r.sample(scalars, min(len(scalars), r.choice([1, 1, 2])))
        new = {p.name: draw_value(r, p.concept) for p in changed}
        last_args, last_truth, _ = calls[-1]
        args = {**last_args, **new}
        if call_id(function.doc, args) in {call_id(function.doc, c[0]) for c in calls}:
            continue
        allowed = {p.name: _allowed(p, new[p.name]) for p in changed}
        calls.append((args, {**last_truth, **allowed}, ""))
        changes = _join([_clause(p, new[p.name], 0, r) for p in changed])
        sentences.append(r.choice(SAME_BUT).format(changes=changes))
    return (calls, " ".join(sentences)) if len(calls) == n else None


def _ask(requests: list[str], r: random.Random) -> str:
    """The question for one or more separately worded requests."""
    if len(requests) == 1:
        return _sentence(requests[0], r)
    if len(requests) == 2:
        prompt = r.choice(PAIRS).format(a=requests[0], b=requests[1])
        return prompt[:1].upper() + prompt[1:]
    return "Please do these: " + "; ".join(requests) + "."


def _sentence(request: str, r: random.Random) -> str:
    opener = r.choice(OPENERS)
    return opener.replace("{vp}", request).replace("{Vp}", request[:1].upper() + request[1:])


def _candidates(r: random.Random, pool: list[SchemaFunction], targets: list[SchemaFunction],
                total: int) -> list[SchemaFunction]:  # fmt: skip
    """The targets and distractors up to `total`: other functions on the same noun (confusable)
    or any; never another variant of a target's (verb, noun), which would leave the right call
    undetermined."""
    pairs = {t.pair for t in targets}
    nouns = {t.noun for t in targets}
    others = [f for f in pool if f.pair not in pairs]
    near = [f for f in others if f.noun in nouns]
    chosen = list(targets)
    for _ in range(50 * total):
        if len(chosen) >= total or not others:
            break
        pick = r.choice(near if near and r.random() < 0.5 else others)
        if pick.pair not in {c.pair for c in chosen}:
            chosen.append(pick)
    r.shuffle(chosen)
    return chosen


def _mixed_calls(r: random.Random, pool: list[SchemaFunction]
                 ) -> tuple[list[SchemaFunction], list[tuple], str]:  # fmt: skip
    """Two different functions in one request, the first called once per listed value and the
    second once or per its own list ("Find X for Lisbon and Osaka. Also find Y with ..."), the
    shape of many of BFCL's parallel_multiple questions."""
    for _ in range(50):
        first, second = r.sample(pool, 2)
        if first.pair == second.pair:
            continue
        varied = _varied_calls(r, first, r.choice([2, 2, 3]))
        if not varied:
            continue
        calls = [(first, c) for c in varied[0]]
        requests = [varied[1]]
        more = _varied_calls(r, second, 2) if r.random() < 0.3 else None
        if more:
            calls += [(second, c) for c in more[0]]
            requests.append(more[1])
        else:
            drawn = draw_call(r, second)
            calls.append((second, drawn))
            requests.append(drawn[2])
        return [first, second], calls, _ask(requests, r)
    raise LookupError("no two functions of this pool make a listed request")


def _distinct_calls(r: random.Random, function: SchemaFunction, n: int) -> list[tuple]:
    """`n` calls of one function whose confirmation ids differ (LookupError when it cannot)."""
    calls, ids = [], set()
    for _ in range(20 * n):
        drawn = draw_call(r, function)
        key = call_id(function.doc, drawn[0])
        if key not in ids:
            ids.add(key)
            calls.append(drawn)
            if len(calls) == n:
                return calls
    raise LookupError(f"{function.name} has too few distinct calls")


def make_schema_task(tier: TaskTier, split: str, rng: random.Random, task_id: str,
                     world_seed: int = 0) -> Task:  # fmt: skip
    """One schema task of `tier` (simple, multi_tool_par or no_tool) from `split`'s functions."""
    pool = pool_of(split, world_seed)
    if not pool:
        raise ValueError(f"split {split!r} has no schema tasks")
    if tier is TaskTier.NO_TOOL:
        return _irrelevant_task(split, rng, task_id, world_seed, pool)
    prompt = ""
    if tier is TaskTier.SIMPLE:
        targets = [rng.choice(pool)]
        calls = [(targets[0], draw_call(rng, targets[0]))]
        total = rng.choices([1, 2, 3, 4, 5], [0.15, 0.25, 0.25, 0.2, 0.15])[0]
    elif tier is TaskTier.MULTI_TOOL_PAR:
        n = rng.choice([2, 2, 3])
        kind = rng.random()
        if kind < 0.25:  # two functions, at least one called once per listed value
            targets, calls, prompt = _mixed_calls(rng, pool)
        elif kind < 0.6:  # one function, several argument sets
            function = rng.choice([f for f in pool if len(f.params) > 1] or pool)
            targets = [function]
            varied = _varied_calls(rng, function, rng.choice([2, 3, 3, 4]))
            changed = _changed_calls(rng, function, n) if rng.random() < 0.6 else None
            if varied and rng.random() < 0.45:
                calls, prompt = [(function, c) for c in varied[0]], _sentence(varied[1], rng)
            elif changed:
                calls, prompt = [(function, c) for c in changed[0]], changed[1]
            else:
                calls = [(function, c) for c in _distinct_calls(rng, function, n)]
        else:
            targets = []
            for _ in range(50 * n):
                if len(targets) == n:
                    break
                pick = rng.choice(pool)
                if pick.pair not in {t.pair for t in targets}:
                    targets.append(pick)
            if len(targets) < 2:
                raise LookupError(f"split {split!r} has too few functions for parallel calls")
            calls = [(f, draw_call(rng, f)) for f in targets]
        total = max(len(targets), rng.choice([1, 2, 3, 4, 5]))
    else:
        raise ValueError(f"no schema tasks of tier {tier}")
    offered = _candidates(rng, pool, targets, total)
    prompt = prompt or _ask([c[2] for _, c in calls], rng)
    return _task(tier, split, task_id, world_seed, prompt, offered, calls)


def _irrelevant_task(split: str, rng: random.Random, task_id: str, world_seed: int,
                     pool: list[SchemaFunction]) -> Task:  # fmt: skip
    """A request for a function that is not offered; the offered ones act on other nouns, so no
    synonym among them (get/fetch/find) could do it either."""
    wanted = rng.choice(pool)
    _, _, request = draw_call(rng, wanted)
    others = [f for f in pool if f.noun != wanted.noun]
    offered = _candidates(rng, others, [], rng.choices([1, 2, 3, 4], [0.3, 0.3, 0.2, 0.2])[0])
    prompt = _sentence(request, rng)
    answer = (f"I cannot {wanted.verb} the {wanted.noun} with the tools I have: none of the "
              "offered functions does that.")  # fmt: skip
    # "No" first, as the world's refusals (`abstention.REFUSE_THINK`): opened with the request
    # like a call's thought, refusals taught the model no first word of their own, and world
    # questions no tool answers drew "One lookup: ..." calls (unnecessary calls 6% -> 15%).
    think = f"No offered function can {wanted.verb} the {wanted.noun}, so I make no call."
    return Task(
        id=task_id,
        prompt=prompt,
        tier=TaskTier.NO_TOOL,
        tools=[f.name for f in offered],
        answer=answer,
        check={"type": "no_call", "check": {"type": "refusal"}},
        minimal_calls=[],
        split=split,
        metadata={
            "template": SCHEMA_TEMPLATES[TaskTier.NO_TOOL],
            "new_shape": False,
            "plan": {"steps": [], "think": think, "answer": answer},
            "parallel": 0,
            "planted_failures": [],
            "world_seed": world_seed,
            "bfcl_category": "irrelevance",
        },
    )


def _category(tier: TaskTier, offered: list[SchemaFunction]) -> str:
    """BFCL's category for the checker: `multiple` when there are functions to choose from."""
    parallel = "parallel" if tier is TaskTier.MULTI_TOOL_PAR else ""
    multiple = "multiple" if len(offered) > 1 else ""
    return "_".join(w for w in (parallel, multiple) if w) or "simple"


def _task(tier: TaskTier, split: str, task_id: str, world_seed: int, prompt: str,
          offered: list[SchemaFunction], calls: list[tuple]) -> Task:  # fmt: skip
    ids = [call_id(f.doc, c[0]) for f, c in calls]
    ground_truth = [{f.name: c[1]} for f, c in calls]
    ops = [op({"name": f.name, "arguments": dict(c[0])}, x_key("id"), f"id{i}")
           for i, (f, c) in enumerate(calls)]  # fmt: skip
    think = _think(calls)
    if len(calls) == 1:
        answer = f"Done: {calls[0][0].name} returned id <<id0>>."
    else:
        answer = "Done: " + "; ".join(f"{f.name} returned id <<id{i}>>"
                                      for i, (f, _) in enumerate(calls)) + "."  # fmt: skip
    category = _category(tier, offered)
    check = {"type": "all", "checks": [
        {"type": "bfcl", "functions": [f.doc for f in offered], "ground_truth": ground_truth,
         "category": category},
        {"type": "set", "items": ids},
    ]}  # fmt: skip
    return Task(
        id=task_id,
        prompt=prompt,
        tier=tier,
        tools=[f.name for f in offered],
        answer=ids,
        check=check,
        minimal_calls=[{"name": f.name, "arguments": c[0]} for f, c in calls],
        split=split,
        metadata={
            "template": SCHEMA_TEMPLATES[tier],
            "new_shape": False,
            "plan": plan(answer, step(think, *ops)),
            "parallel": len(calls) if tier is TaskTier.MULTI_TOOL_PAR else 0,
            "planted_failures": [],
            "world_seed": world_seed,
            "bfcl_category": category,
        },
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _think(calls: list[tuple]) -> str:
    """The plan: what is asked first (in the question's words), then which call does it.

    Naming the request before the decision lets the function name be copied next to the words
    that match it. Refusals (`_irrelevant_task`) open with "No" instead, so that abstaining is
    one first word the model can learn, as in the world's tasks."""
    groups: dict[str, list[tuple]] = {}
    for function, call in calls:
        groups.setdefault(function.name, []).append((function, call))
    asked = []
    for group in groups.values():
        function = group[0][0]
        phrase = f"{function.verb} the {function.noun}"
        values = _varying_values(function, [c[0] for _, c in group]) if len(group) > 1 else []
        if values:
            phrase += " for " + _join(values)
        asked.append(phrase)
    names = ", ".join(groups)
    if len(calls) == 1:
        return f"{_capital(asked[0])}: {names} does this; the question gives the arguments."
    return f"{_capital(_join(asked))}: {len(calls)} independent calls in one turn: {names}."


def _varying_values(function: SchemaFunction, arguments: list[dict]) -> list[str]:
    """Each call's value of an argument whose value differs between the calls (the first one
    every call states, a plain value before an object); none when the calls are alike."""
    differing = []
    for param in function.params:
        values = [a.get(param.name) for a in arguments]
        if any(v != values[0] for v in values):
            differing.append((None in values, bool(param.fields), param, values))
    if not differing:
        return []
    *_, param, values = min(differing, key=lambda d: d[:2])
    return [_say(v, param, False) if v is not None else "the default" for v in values]


def schema_tools(names: list[str], world_seed: int = 0) -> dict[str, ToolDefinition]:
    """The generated functions among `names` as tools an episode can call (others left out)."""
    if not names:
        return {}
    return {n: make_schema_tool(f.doc) for n, f in find_functions(names, world_seed).items()}
