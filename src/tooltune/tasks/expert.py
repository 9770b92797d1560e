"""A scripted expert that solves the built-in tasks through the real tools.

`ExpertPolicy` is a `Policy`: for each prompt it reads the conversation so far (with
`chat_format.parse_prompt`), finds the task by its user message, and decides the next assistant
turn from the task's plan and the tool results already in the conversation. Values are always
read from those results (a chief executive's name from the search snippet, a column name from
`describe_table`, a flight id from `search_flights`); the world's ground truth is only used to
choose what to call. Its trajectories are the SFT demonstrations.

The policy is stateless: a plan is a Python generator that yields turns and receives each
turn's results, and every `generate` call replays the generator over the results found in the
prompt. Replaying is cheap and makes batches, retries and resumed conversations trivially right.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import posixpath
import re
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from tooltune.chat_format import (
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    parse_prompt,
    render_action,
)
from tooltune.tasks.reading import (
    ExpertError,
    extract,
    field_value,
    hit_titled,
    mentions,
    note,
    to_number,
)
from tooltune.tasks.templates.plan import expand_slots, plain_number, written
from tooltune.tasks.templates.wording import MONTHS, long_date
from tooltune.types import AgentAction, ToolCall

_RESPONSE = re.compile(
    re.escape(TOOL_RESPONSE_OPEN) + r"(.*?)" + re.escape(TOOL_RESPONSE_CLOSE), re.DOTALL
)


@dataclass
class Result:
    """One tool response as the model sees it in the tool turn."""

    name: str
    ok: bool
    value: Any = None
    error: str = ""


@dataclass
class Turn:
    """One assistant turn: a short plan, tool calls, or the final answer."""

    think: str = ""
    calls: list[dict] = field(default_factory=list)
    answer: str | None = None
    taught: bool = True  # False: a slip shown in the demonstration but not taught (`tasks.slips`)

    def render(self) -> str:
        calls = [
            ToolCall(id=f"call_{i}", name=c["name"], arguments=c["arguments"])
            for i, c in enumerate(self.calls)
        ]
        kind = "tool_call" if calls else "respond"
        return render_action(AgentAction(kind, self.answer or "", calls, self.think))


Plan = Generator[Turn, list[Result], None]


# --------------------------------------------------------------------------------------------
# Reading the conversation
# --------------------------------------------------------------------------------------------


def parse_results(content: str) -> list[Result]:
    """The `<tool_response>` blocks of a tool turn."""
    out = []
    for body in _RESPONSE.findall(content):
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            out.append(Result("", False, error="unreadable tool response"))
            continue
        if "error" in data:
            out.append(Result(data.get("name", ""), False, error=str(data["error"])))
        else:
            value = data.get("result")
            if isinstance(value, str):  # a clipped long result arrives as text
                with contextlib.suppress(json.JSONDecodeError):
                    value = json.loads(value)
            out.append(Result(data.get("name", ""), True, value))
    return out


def conversation(prompt: str) -> tuple[str, list[list[Result]]]:
    """(user message, results of each tool turn so far) from a rendered prompt."""
    messages = parse_prompt(prompt)
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    results = [parse_results(m["content"]) for m in messages if m["role"] == "tool"]
    return user, results


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


NOTES = "__notes__"  # a plan's values hold here what the last results said, for the next turn


def _note(values: dict, text: str, value: Any) -> None:
    if text:
        values.setdefault(NOTES, []).append((text, value))


def _open_with_notes(turn: Turn, values: dict) -> Turn:
    """Start the turn's thought with the notes on the results read since the last turn, less
    those whose value the thought already states."""
    notes = [text for text, value in values.pop(NOTES, []) if not mentions(turn.think, value)]
    if notes:
        turn.think = " ".join([*notes, turn.think]).strip()
    return turn


def _noted(steps: Plan, values: dict) -> Plan:
    """`steps` with each of its turns opened by the notes (`_open_with_notes`)."""
    try:
        turn = next(steps)
        while True:
            turn = steps.send((yield _open_with_notes(turn, values)))
    except StopIteration as stop:
        return stop.value


def _checked(results: list[Result], n: int) -> list[Result]:
    if len(results) != n:
        raise ExpertError(f"expected {n} tool results, got {len(results)}")
    return results


def _plain_step(step: dict, values: dict) -> Plan:
    calls = [expand_slots(o["call"], values) for o in step["calls"]]
    results = _checked((yield Turn(expand_slots(step["think"], values), calls)), len(calls))
    missing = []
    for o, r, c in zip(step["calls"], results, calls, strict=True):
        if not r.ok:
            raise ExpertError(f"{c['name']} failed: {r.error}")
        try:
            values[o["as"]] = extract(o["extract"], r.value, values)
        except ExpertError:
            if o["extract"]["kind"] != "search":
                raise
            missing.append(o)  # the snippet did not show the fact: open the document
            continue
        said = note(o["extract"], c, r.value, values[o["as"]], values, len(calls) > 1)
        _note(values, said, values[o["as"]])
        for name, spec in o.get("also", {}).items():
            values[name] = extract(spec, r.value, values)
    if missing:
        hits = []
        for o, r in zip(step["calls"], results, strict=True):
            if o in missing:
                hits.append(hit_titled(r.value, expand_slots(o["extract"]["title"], values))["id"])
        think = "The snippets do not show everything; open the documents."
        opened = _checked(
            (
                yield Turn(
                    think, [{"name": "open_document", "arguments": {"doc_id": h}} for h in hits]
                )
            ),
            len(hits),
        )
        for o, r in zip(missing, opened, strict=True):
            if not r.ok:
                raise ExpertError(f"open_document failed: {r.error}")
            values[o["as"]] = field_value(r.value.get("text", ""), o["extract"]["field"])
            for name, spec in o.get("also", {}).items():
                values[name] = field_value(r.value.get("text", ""), spec["field"])


def _flights(found: Result, criterion: str) -> tuple[list[dict], bool]:
    """(available flights best first, whether the list is complete) from a search result."""
    if not found.ok:
        raise ExpertError(f"search_flights failed: {found.error}")
    key = (
        (lambda f: (f["price"], f["departure"]))
        if criterion == "cheapest"
        else (lambda f: (f["departure"], f["price"]))
    )
    if isinstance(found.value, dict):
        return sorted(found.value.get("flights", []), key=key), True
    # Cut short by the observation limit: the service lists flights cheapest first, so the
    # visible head is still right for "cheapest"; "earliest" needs the whole list.
    if criterion != "cheapest":
        raise ExpertError("the flight list was cut short; cannot tell the earliest flight")
    pattern = (
        r'"id": "(\w+)"[^}]*?"departure": "([\d:]+)"[^}]*?"airline": "([^"]*)", "price": ([\d.]+)'
    )
    visible = [
        {"id": m[0], "departure": m[1], "airline": m[2], "price": float(m[3])}
        for m in re.findall(pattern, str(found.value))
    ]
    if not visible:
        raise ExpertError("no flight visible in the search result")
    return visible, False


def _book(step: dict, values: dict, plan: dict, today: date) -> Plan:
    origin, destination = (
        expand_slots(step["origin"], values),
        expand_slots(step["destination"], values),
    )
    passenger, day, criterion = (
        expand_slots(step["passenger"], values),
        step["date"],
        step["criterion"],
    )
    phrase = plan.get("date_phrase", "")
    when = f"Today is {long_date(today)}, so {phrase} is {day}. " if phrase else ""
    think = f"{when}Search {origin} to {destination} on {day}, book the {criterion} flight for {passenger}, then confirm."
    search = {
        "name": "search_flights",
        "arguments": {"origin": origin, "destination": destination, "date": day},
    }
    (found,) = _checked((yield Turn(think, [search])), 1)
    flights, complete = _flights(found, criterion)
    booking = None
    for attempt in range(8):
        if not flights:
            break
        flight = flights[0]
        price = written(flight["price"])
        if attempt == 0:
            think = (f"The {criterion} is {flight['id']} ({flight['airline']}, "
                     f"{flight['departure']}, ${price}). Book it.")  # fmt: skip
            if criterion == "earliest":  # the list comes cheapest first: compare the times said
                listed = found.value.get("flights", []) if isinstance(found.value, dict) else []
                times = ", ".join(f"{f['id']} {f['departure']}" for f in listed)
                think = f"Departures: {times}. {think}"
        else:
            think = (f"The next {criterion} is {flight['id']} ({flight['departure']}, ${price}); "
                     "book it instead.")  # fmt: skip
        book = {
            "name": "book_flight",
            "arguments": {"flight_id": flight["id"], "passenger": passenger},
        }
        (booked,) = _checked((yield Turn(think, [book])), 1)
        if booked.ok:
            booking, chosen = booked.value, flight
            break
        if "sold out" not in booked.error and "409" not in booked.error:
            raise ExpertError(f"book_flight failed: {booked.error}")
        flights = flights[1:]
        if not complete:  # the list was cut short: search again for what is still available
            think = "That flight sold out and the rest of the list was cut off; search again."
            (found,) = _checked((yield Turn(think, [search])), 1)
            flights, complete = _flights(found, criterion)
    if booking is None:
        raise ExpertError("every flight sold out")
    confirm = {"name": "confirm_booking", "arguments": {"booking_id": booking["booking_id"]}}
    (confirmed,) = _checked(
        (yield Turn(f"Booking {booking['booking_id']} is pending; confirm it.", [confirm])), 1
    )
    if not confirmed.ok or confirmed.value.get("status") != "confirmed":
        raise ExpertError(f"confirm_booking failed: {confirmed.error}")
    values.update(
        booking_id=booking["booking_id"], flight_id=chosen["id"], airline=chosen["airline"],
        departure=chosen["departure"], price=chosen["price"], passenger=passenger, date=day,
    )  # fmt: skip


def _read_or_find(step: dict, values: dict) -> Plan:
    path = step["path"]
    read = {"name": "read_file", "arguments": {"path": path}}
    then = f", then {step['then']}" if step.get("then") else ""
    (first,) = _checked((yield Turn(f"Read {path}{then}.", [read])), 1)
    if not first.ok:
        think = (
            f"{path} is not there; it was probably moved. Search the files for {step['pattern']}."
        )
        search = {"name": "search_files", "arguments": {"pattern": step["pattern"]}}
        (found,) = _checked((yield Turn(think, [search])), 1)
        if not found.ok:
            raise ExpertError(f"search_files failed: {found.error}")
        paths = [m.split(":", 1)[0] for m in found.value.get("matches", [])]
        chosen = next((p for p in paths if step["select"] in p), None)
        if chosen is None:
            raise ExpertError(f"no file matching {step['select']!r}")
        (first,) = _checked(
            (
                yield Turn(
                    f"The memo is now at {chosen}. Read it.",
                    [{"name": "read_file", "arguments": {"path": chosen}}],
                )
            ),
            1,
        )
        if not first.ok:
            raise ExpertError(f"read_file failed: {first.error}")
    values[step["as"]] = extract(step["extract"], first.value, values)


def closest_column(wrong: str, columns: list[str]) -> str | None:
    """The column a wrong name most likely meant: one containing it (or contained in it),
    else the closest spelling."""
    for col in columns:
        if wrong.lower() in col.lower() or col.lower() in wrong.lower():
            return col
    close = difflib.get_close_matches(wrong, columns, n=1, cutoff=0.3)
    return close[0] if close else None


def _columns(desc: Result) -> list[str]:
    """The column names a `describe_table` result shows (all, or those a clipped one shows)."""
    if not desc.ok:
        raise ExpertError(f"describe_table failed: {desc.error}")
    if isinstance(desc.value, dict):
        return [c["name"] for c in desc.value.get("columns", [])]
    return re.findall(r'"name": "(\w+)"', str(desc.value))


def _look_at_columns(wrong: str, table: str) -> Plan:
    """The turn after a query named a column that does not exist: the table's columns."""
    think = f"Column {wrong} does not exist. Check the columns of {table}."
    describe = {"name": "describe_table", "arguments": {"table": table}}
    (desc,) = _checked((yield Turn(think, [describe])), 1)
    return _columns(desc)


CORRECTED_QUERY = "The column is called {}. Run the corrected query."


def _sql_fix(step: dict, values: dict) -> Plan:
    query = step["query"]
    (first,) = _checked(
        (
            yield Turn(
                "Run the query as given first.",
                [{"name": "sql_query", "arguments": {"query": query}}],
            )
        ),
        1,
    )
    if not first.ok:
        wrong = re.search(r"no such column: (\w+)", first.error)
        table = re.search(r"\bFROM\s+(\w+)", query, re.IGNORECASE)
        if not wrong or not table:
            raise ExpertError(f"cannot repair: {first.error}")
        columns = yield from _look_at_columns(wrong.group(1), table.group(1))
        right = closest_column(wrong.group(1), columns)
        if right is None:
            raise ExpertError(f"no column like {wrong.group(1)!r}")
        fixed = re.sub(rf"\b{re.escape(wrong.group(1))}\b", right, query)
        (first,) = _checked(
            (
                yield Turn(
                    CORRECTED_QUERY.format(right),
                    [{"name": "sql_query", "arguments": {"query": fixed}}],
                )
            ),
            1,
        )
        if not first.ok:
            raise ExpertError(f"the corrected query failed: {first.error}")
    values[step["as"]] = extract(step["extract"], first.value, values)


def _slip(step: dict, values: dict) -> Plan:
    """A step whose one call is first made as a model might slip (`tasks.slips`: a column
    guessed, a file name misspelt; that turn untaught), then looked into and made right."""
    fix = step["fix"]
    slipped = expand_slots(step["slip"], values)
    (first,) = _checked(
        (yield Turn(expand_slots(step["think"], values), [slipped], taught=False)), 1
    )
    if first.ok:
        raise ExpertError(f"the slipped call {slipped} did not fail")
    if fix["kind"] == "column":
        columns = yield from _look_at_columns(fix["wrong"], fix["table"])
        if fix["right"] not in columns:
            raise ExpertError(f"{fix['table']} has no column {fix['right']!r}")
        think = CORRECTED_QUERY.format(fix["right"])
    else:
        folder = posixpath.dirname(fix["right"]) or "."
        think = f"There is no {fix['wrong']}. List {folder} to find the file's name."
        listing = {"name": "list_files", "arguments": {"path": folder}}
        (listed,) = _checked((yield Turn(think, [listing])), 1)
        name = posixpath.basename(fix["right"])
        if not listed.ok or name not in str(listed.value):
            raise ExpertError(f"list_files does not show {name}: {listed.error or listed.value}")
        think = f"The file is {fix['right']}. Read it."
    plain = {k: v for k, v in step.items() if k not in ("macro", "slip", "fix")}
    yield from _plain_step({**plain, "think": think}, values)


ANSWER_THINK = "The results answer the question."
BOOKING_ANSWER = ("Booked <<passenger>> on flight <<flight_id>> (<<airline>>, <<date>>, departing <<departure>>, "
                  "$<<price>>). Booking <<booking_id>> is confirmed.")  # fmt: skip


def run_plan(plan: dict, today: date) -> Plan:
    """The expert's whole episode for one task, as a generator of turns."""
    values: dict[str, Any] = {}
    for step in plan["steps"]:
        macro = step.get("macro")
        if macro == "book":
            steps = _book(step, values, plan, today)
        elif macro == "read_or_find":
            steps = _read_or_find(step, values)
        elif macro == "sql_fix":
            steps = _sql_fix(step, values)
        elif macro == "slip":
            steps = _slip(step, values)
        else:
            steps = _plain_step(step, values)
        yield from _noted(steps, values)
    reduce = plan.get("reduce")
    # A plan without steps says why it makes no call. After tool results the answer turn opens
    # with a thought as every other turn does: the model then decides between calling again and
    # answering in words, not with the turn's first token (a bare answer turn was outnumbered by
    # thinking turns, and trained models went on calling after the result they needed).
    think = plan.get("think", "") or (ANSWER_THINK if plan["steps"] else "")
    if reduce:  # name the entity whose looked-up value the calculator picked
        numbers = [to_number(values[v]) for v in reduce["vars"]]
        value = to_number(values[reduce["value"]])
        index = min(range(len(numbers)), key=lambda i: abs(numbers[i] - value))
        values[reduce["as"]] = reduce["names"][index]
        think = f"The {reduce['side']} is {plain_number(value)}: {reduce['names'][index]}."
    answer = expand_slots(plan["answer"] or BOOKING_ANSWER, values)
    yield _open_with_notes(Turn(think=think, answer=answer), values)


def next_turn(plan: dict, today: date, history: list[list[Result]]) -> Turn:
    """Replay the plan over the results seen so far; the next turn is what it yields then."""
    gen = run_plan(plan, today)
    try:
        turn = next(gen)
        for results in history:
            if turn.answer is not None:
                break
            turn = gen.send(results)
    except ExpertError as exc:
        return Turn(answer=f"I could not finish the task: {exc}")
    except StopIteration:
        return Turn(answer="I could not finish the task.")
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        # a result in an unexpected shape (for example cut short by max_observation_chars)
        return Turn(answer=f"I could not finish the task: unexpected tool result ({exc!r})")
    return turn


_RECENT: OrderedDict[str, Any] = OrderedDict()
RECENT_LIMIT = 20_000


def remember(task: Any) -> None:
    """Keep a generated task findable by its prompt (the most recent `RECENT_LIMIT` ones), so
    an expert built without a task list can still play tasks sampled in this process."""
    _RECENT[task.prompt] = task
    _RECENT.move_to_end(task.prompt)
    while len(_RECENT) > RECENT_LIMIT:
        _RECENT.popitem(last=False)


class ExpertPolicy:
    """A `Policy` that plays the expert for the tasks it knows (found by user prompt).

    Give it the tasks (`ExpertPolicy(tasks)`), or an `Environment`/`World` and let
    `evaluate` hand the tasks over through `prepare(tasks)` before the rollouts. Tasks it was
    not given are looked up among those `sample_tasks` generated recently in this process."""

    def __init__(self, tasks: Any = None, today: date | None = None) -> None:
        self.tasks: dict[str, Any] = {}
        self.today = today
        if tasks is not None and not isinstance(tasks, list | tuple):
            world = getattr(tasks, "world", tasks)  # an Environment or a World
            self.today = today or getattr(world, "today", None)
            tasks = []
        self.add(tasks or [])

    def add(self, tasks: Any) -> None:
        for task in tasks:
            if "plan" not in task.metadata:
                raise ValueError(f"task {task.id} has no expert plan")
            self.tasks[task.prompt] = task

    def prepare(self, tasks: Any) -> None:
        """Learn the tasks about to be rolled out (called by `evaluation.run_evaluation`)."""
        self.add(tasks)

    def _today(self, task: Any) -> date:
        if self.today is not None:
            return self.today
        match = re.search(r"Today is \w+, (\d+) (\w+) (\d{4})", task.prompt)
        if match:
            return date(int(match.group(3)), MONTHS.index(match.group(2)) + 1, int(match.group(1)))
        return date.today()

    def generate(
        self, prompts: list[str], sampling: Any = None, prompt_token_ids: Any = None
    ) -> list:
        from tooltune.rollout import Completion

        out = []
        for prompt in prompts:
            user, history = conversation(prompt)
            task = self.tasks.get(user) or _RECENT.get(user)
            if task is None:
                out.append(Completion("I have no plan for this task."))
                continue
            turn = next_turn(task.metadata["plan"], self._today(task), history)
            out.append(Completion(turn.render(), weight=1.0 if turn.taught else 0.0))
        return out
