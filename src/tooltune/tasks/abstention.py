"""Task templates of the no-tool tier: questions that no offered tool can help with.

Tools are still offered, chosen to look relevant (the database for a question about a company,
the flight tools beside a date), so not calling one is a decision the model has to make. Two
kinds of question:

- out of reach: the world holds no answer (a weather forecast, a phone number, an opinion, a
  forecast, an errand such as sending an e-mail). The right episode makes no call and says it
  cannot: the check is ``{"type": "no_call", "check": {"type": "refusal"}}``, and the expert
  says "I cannot ... with the tools I have: <why>".
- in the question: the answer is written in the prompt (the larger of two numbers, a figure
  quoted from a note, a date to rewrite). The right episode makes no call and answers:
  ``{"type": "no_call", "check": <answer check>}``.

Their minimal solution is empty, so every call made on them counts as unnecessary. BFCL's
`irrelevance` category measures the same skill. The tier is registered in
`tooltune.tasks.splits`; entities come from the split's pool as in `tooltune.tasks.templates`.
"""

from __future__ import annotations

from datetime import date

from tooltune.config import TaskTier
from tooltune.tasks.templates.draft import Ctx, Draft, Template, text_check
from tooltune.tasks.templates.facts import fact_check
from tooltune.tasks.templates.plan import fmt_value
from tooltune.tasks.templates.wording import MONTHS, long_date, money

# Fixed sentences on purpose. The world's calling thoughts open with a few fixed words too
# ("One lookup: ..."), and greedy decoding decides at the first one. Opening these with the
# request restated instead (as the schema tasks' thoughts do) split "No" into many first words
# that lost to "One lookup": `no_tool_opinion` 7/7 -> 0/7 after SFT, every episode "One lookup:
# the job of ..." (2026-12-07; the tier's other losses that run came back with these sentences).
REFUSE_THINK = "No offered tool can help with this, so I make no call."
ANSWER_THINK = "The question itself holds the answer, so I make no call."
RELATED = {  # tool families that look relevant to a question about each kind of thing
    "company": [["database"], ["search"], ["database", "search"]],
    "person": [["database"], ["search"], ["search", "files"]],
    "place": [["search"], ["database"], ["search", "browser"]],
}


def refuse(prompt: str, families: list[str], reason: str, verb: str = "answer") -> Draft:
    """A question out of the offered tools' reach: no call, and say so."""
    answer = f"I cannot {verb} this with the tools I have: {reason}."
    check = {"type": "no_call", "check": {"type": "refusal"}}
    return Draft(prompt, families, answer, check, _plan(REFUSE_THINK, answer), truth={})


def answer_directly(prompt: str, families: list[str], value: object, check: dict,
                    answer: str) -> Draft:  # fmt: skip
    """A question whose answer is in the prompt: no call, and answer it."""
    check = {"type": "no_call", "check": check}
    return Draft(prompt, families, value, check, _plan(ANSWER_THINK, answer), truth={})


def _plan(think: str, answer: str) -> dict:
    """The expert's plan: no step, one answering turn (see `expert.run_plan`)."""
    return {"steps": [], "think": think, "answer": answer}


# --------------------------------------------------------------------------------------------
# Out of reach: refuse
# --------------------------------------------------------------------------------------------


def t_weather(ctx: Ctx) -> Draft:
    place = ctx.place()["name"]
    prompt = ctx.choice([f"What will the weather be like in {place} tomorrow?",
                         f"Will it rain in {place} this weekend?",
                         f"What is the temperature in {place} right now?",
                         f"Should I pack an umbrella for a trip to {place} next week?"])  # fmt: skip
    reason = "none of them gives weather forecasts or current conditions"
    return refuse(prompt, ctx.choice(RELATED["place"]), reason)


def t_contact(ctx: Ctx) -> Draft:
    if ctx.rng.random() < 0.5:
        who = ctx.person()["name"]
        prompt = ctx.choice([f"What is {who}'s phone number?",
                             f"Give me the e-mail address of {who}.",
                             f"How can I reach {who} by phone?"])  # fmt: skip
        families = ctx.choice(RELATED["person"])
    else:
        company = ctx.company()
        name, ceo = company["name"], company["ceo"]
        prompt = ctx.choice([f"What is the phone number of {name}'s head office?",
                             f"What is the e-mail address of {ceo}, the chief executive of {name}?",
                             f"What is the address of {name}'s website?"])  # fmt: skip
        families = ctx.choice(RELATED["company"])
    reason = "their records hold no phone numbers, e-mail or web addresses"
    return refuse(prompt, families, reason)


def t_opinion(ctx: Ctx) -> Draft:
    if ctx.rng.random() < 0.5:
        name = ctx.company()["name"]
        prompt = ctx.choice([f"Is {name} a good company to work for?",
                             f"Should I buy shares in {name}?",
                             f"Do people like the products of {name}?"])  # fmt: skip
        families = ctx.choice(RELATED["company"])
    else:
        a, b = (p["name"] for p in ctx.places(2))
        prompt = ctx.choice([f"Which city is nicer to live in, {a} or {b}?",
                             f"Is {a} worth a visit?",
                             f"Would you rather spend a holiday in {a} or in {b}?"])  # fmt: skip
        families = ctx.choice(RELATED["place"])
    return refuse(prompt, families, "they return facts, not opinions or advice")


def t_forecast(ctx: Ctx) -> Draft:
    """The tools know today's figures, which makes the question about the future tempting."""
    company, place = ctx.company(), ctx.place()["name"]
    name, year = company["name"], ctx.rng.randrange(2030, 2051, 5)
    prompt, kind = ctx.choice([(f"What will {name}'s revenue be in {year}?", "company"),
                               (f"Who will be the next chief executive of {name}?", "company"),
                               (f"How many employees will {name} have in {year}?", "company"),
                               (f"How many people will live in {place} in {year}?", "place")])  # fmt: skip
    reason = "they hold today's figures, not forecasts"
    return refuse(prompt, ctx.choice(RELATED[kind]), reason)


def t_errand(ctx: Ctx) -> Draft:
    """Something to do that no offered tool does (the flight tools book flights, not hotels)."""
    person, place = ctx.person()["name"], ctx.place()["name"]
    prompt, families, reason = ctx.choice([
        (f"Send an e-mail to {person} saying the meeting has moved to Friday.",
         ["files", "database"], "none of them sends e-mail"),
        (f"Book a hotel room in {place} for two nights.", ["flights", "search"],
         "they book flights, not hotels"),
        (f"Order a taxi to take me to the centre of {place}.", ["flights", "browser"],
         "none of them orders taxis"),
        (f"Set a reminder to call {person} tomorrow at nine.", ["files"],
         "none of them sets reminders"),
    ])  # fmt: skip
    return refuse(prompt, families, reason, verb="do")


# --------------------------------------------------------------------------------------------
# In the question: answer
# --------------------------------------------------------------------------------------------


def t_larger(ctx: Ctx) -> Draft:
    r = ctx.rng
    if r.random() < 0.5:  # the same digits in another order: 17 or 71
        digits = r.sample("123456789", r.choice([2, 3]))
        a = int("".join(digits))
        b = int("".join(reversed(digits)))
    else:
        a, b = r.sample(range(2, 5000), 2)
    larger = r.random() < 0.6
    word = r.choice(["larger", "bigger", "greater"] if larger else ["smaller", "lower"])
    best = max(a, b) if larger else min(a, b)
    prompt = r.choice([f"Which is {word}, {a} or {b}? Reply with just the number.",
                       f"Which number is {word}: {a} or {b}? Answer with the number only.",
                       f"Of {a} and {b}, which one is {word}? Give only the number."])  # fmt: skip
    check = {"type": "choice", "value": str(best), "options": [str(a), str(b)]}
    return answer_directly(prompt, ctx.choice([["math"], ["python"], ["math", "python"]]),
                           best, check, str(best))  # fmt: skip


def t_quoted_fact(ctx: Ctx) -> Draft:
    """A figure quoted in the prompt. The tools would return the same figure (it is the
    world's), so looking it up is right but wasted."""
    company, person, place = ctx.company(), ctx.person(), ctx.place()
    c, p, pl = company["name"], person["name"], place["name"]
    fact, note, question, answer, value, kind = ctx.choice([
        ("revenue", f"{c} reported revenue of {money(company['revenue_musd'])} last year.",
         f"what was {c}'s revenue in million USD?", f"{c}'s revenue was <v>.",
         company["revenue_musd"], "company"),
        ("hq", f"{c} runs its business from its headquarters in {company['hq']}.",
         f"in which city is {c} headquartered?", f"{c} is headquartered in <v>.",
         company["hq"], "company"),
        ("employees", f"{c} employs {fmt_value(company['employees'])} people.",
         f"how many employees does {c} have?", f"{c} has <v> employees.",
         company["employees"], "company"),
        ("age", f"{p} is {person['age']} years old and lives in {person['city']}.",
         f"how old is {p}?", f"{p} is <v> years old.", person["age"], "person"),
        ("city", f"{p} is {person['age']} years old and lives in {person['city']}.",
         f"which city does {p} live in?", f"{p} lives in <v>.", person["city"], "person"),
        ("place_founded", f"{pl}, a city of {fmt_value(place['population'])}, was founded in "
         f"{place['founded']}.", f"when was {pl} founded?", f"{pl} was founded in <v>.",
         place["founded"], "place"),
    ])  # fmt: skip
    prompt = ctx.choice([f'A note says: "{note}" According to the note, {question}',
                         f'From this morning\'s report: "{note}" Based on it, {question}',
                         f'"{note}" Going by that sentence, {question}'])  # fmt: skip
    shown = money(value) if fact == "revenue" else fmt_value(value)
    return answer_directly(prompt, ctx.choice(RELATED[kind]), value, fact_check(fact, value),
                           answer.replace("<v>", shown))  # fmt: skip


def t_iso_date(ctx: Ctx) -> Draft:
    r = ctx.rng
    d = date(r.randrange(2023, 2029), r.randrange(1, 13), r.randrange(1, 29))
    month = MONTHS[d.month - 1]
    prompt = r.choice([f"Write {long_date(d)} as an ISO 8601 date (YYYY-MM-DD).",
                       f"What is {month} {d.day}, {d.year} in YYYY-MM-DD form?",
                       f"Convert {d.day} {month} {d.year} to the format YYYY-MM-DD."])  # fmt: skip
    families = ctx.choice([["flights"], ["python"], ["math"], ["files"]])
    return answer_directly(prompt, families, d.isoformat(), text_check(d.isoformat()),
                           d.isoformat())  # fmt: skip


def t_clock_time(ctx: Ctx) -> Draft:
    """A 24-hour time rewritten on the 12-hour clock: the question holds the answer."""
    r = ctx.rng
    hour, minute = r.randrange(24), r.choice([0, 5, 10, 15, 20, 30, 40, 45, 50, 55])
    answer = f"{hour % 12 or 12}:{minute:02d} {'AM' if hour < 12 else 'PM'}"
    prompt = r.choice([f"Write {hour:02d}:{minute:02d} on the 12-hour clock, with AM or PM.",
                       f"What is {hour:02d}:{minute:02d} in 12-hour time (AM/PM)?",
                       f"Convert the 24-hour time {hour:02d}:{minute:02d} to 12-hour form with AM or PM."])  # fmt: skip
    families = ctx.choice([["flights"], ["python"], ["math"], ["files"]])
    return answer_directly(prompt, families, answer, text_check(answer), answer)


N = TaskTier.NO_TOOL
NO_TOOL_TEMPLATES: list[Template] = [
    Template("no_tool_weather", N, t_weather),
    Template("no_tool_contact", N, t_contact),
    Template("no_tool_opinion", N, t_opinion),
    Template("no_tool_forecast", N, t_forecast),
    Template("no_tool_errand", N, t_errand, heldout=True),
    Template("no_tool_larger", N, t_larger),
    Template("no_tool_quoted_fact", N, t_quoted_fact),
    Template("no_tool_iso_date", N, t_iso_date, heldout=True),
    Template("no_tool_clock_time", N, t_clock_time, train_only=True),
]
