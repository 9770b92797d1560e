"""Booking and confirming flights on a date said relative to today.

On about half of the route-days the cheapest flight sells out right after the search, so the
booking has to move on to the next flight; the passenger or the destination may first have to be
looked up.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from tooltune.tasks.templates.draft import Ctx, Draft
from tooltune.tasks.templates.facts import lookup_op
from tooltune.tasks.templates.plan import call, plan, step
from tooltune.tasks.templates.wording import date_phrase, long_date


def _route_day(
    ctx: Ctx, sold_out: bool | None, route: dict | None = None
) -> tuple[dict, str, list[dict]]:
    routes = [route] if route else [r for r in ctx.world.routes if r["pool"] == ctx.pool]
    options = []
    for r in routes:
        by_day: dict[str, list[dict]] = {}
        for f in ctx.world.flights:
            if f["origin"] == r["origin"] and f["destination"] == r["destination"]:
                by_day.setdefault(f["date"], []).append(f)
        for day, flights in sorted(by_day.items()):
            if sold_out is None or any(f["sells_out"] for f in flights) == sold_out:
                options.append((r, day, flights))
    if not options:
        raise LookupError("no matching route-day")
    return ctx.choice(options)


def booking_truth(flights: list[dict], criterion: str) -> tuple[list[dict], dict]:
    """Flights in the expert's order of preference and the one that ends up booked."""
    key = (
        (lambda f: (f["price"], f["departure"]))
        if criterion == "cheapest"
        else (lambda f: (f["departure"], f["price"]))
    )
    ranked = sorted(flights, key=key)
    booked = next(f for f in ranked if not f["sells_out"])
    return ranked, booked


def booking_step(origin: str, destination: str, day: str, criterion: str, passenger: str) -> dict:
    return {"macro": "book", "origin": origin, "destination": destination, "date": day,
            "criterion": criterion, "passenger": passenger}  # fmt: skip


def booking_planted(ranked: list[dict]) -> list[dict]:
    """The book_flight calls that fail on purpose: flights ranked before the one that ends up
    booked all sell out."""
    planted = []
    for f in ranked:
        if not f["sells_out"]:
            break
        planted.append(call("book_flight", flight_id=f["id"]))
    return planted


def booking_calls(
    ranked: list[dict], origin: str, destination: str, day: str, passenger: str
) -> list[dict]:
    calls = [call("search_flights", origin=origin, destination=destination, date=day)]
    for f in ranked:
        calls.append(call("book_flight", flight_id=f["id"], passenger=passenger))
        if not f["sells_out"]:
            break
    calls.append(call("confirm_booking", booking_id="<<booking_id>>"))
    return calls


def _booking_prompt(
    ctx: Ctx, origin: str, destination: str, phrase: str, criterion: str, who: str
) -> str:
    today = f"Today is {long_date(ctx.world.today)}. "
    adj = "cheapest" if criterion == "cheapest" else "earliest"
    subject = who[0].upper() + who[1:]
    return today + ctx.choice(
        [
            f"Book the {adj} flight from {origin} to {destination} {phrase} for {who}, and confirm it.",
            f"Please get {who} on the {adj} {origin} to {destination} flight {phrase}; the booking must be confirmed.",
            f"{subject} needs to fly from {origin} to {destination} {phrase}. Book and confirm the {adj} option.",
        ]
    )


def t_book(ctx: Ctx) -> Draft:
    criterion = ctx.choice(["cheapest", "cheapest", "earliest"])
    sold = ctx.rng.random() < 0.75 if criterion == "cheapest" else None
    route, day, flights = _route_day(ctx, sold)
    passenger = ctx.person()["name"]
    target = date.fromisoformat(day)
    phrase = date_phrase(ctx.rng, ctx.world.today, target)
    ranked, booked = booking_truth(flights, criterion)
    prompt = _booking_prompt(
        ctx, route["origin"], route["destination"], phrase, criterion, passenger
    )
    p = plan("", booking_step(route["origin"], route["destination"], day, criterion, passenger))
    p["date_phrase"] = phrase
    truth = {
        "_macro": {0: booking_calls(ranked, route["origin"], route["destination"], day, passenger)}
    }
    check = {"type": "booking", "flight_id": booked["id"], "passenger": passenger}
    answer = {"flight_id": booked["id"], "passenger": passenger}
    return Draft(prompt, ["flights"], answer, check, p, truth, planted=booking_planted(ranked))


def t_book_for_ceo(ctx: Ctx) -> Draft:
    company = ctx.company()
    route, day, flights = _route_day(ctx, ctx.rng.random() < 0.75)
    source = ctx.choice(["search", "database"])
    phrase = date_phrase(ctx.rng, ctx.world.today, date.fromisoformat(day))
    ranked, booked = booking_truth(flights, "cheapest")
    prompt = _booking_prompt(
        ctx,
        route["origin"],
        route["destination"],
        phrase,
        "cheapest",
        f"the chief executive of {company['name']}",
    )
    p = plan(
        "",
        step(
            f"First find who runs {company['name']}; that is the passenger.",
            lookup_op(source, "ceo", company["name"], "ceo"),
        ),
        booking_step(route["origin"], route["destination"], day, "cheapest", "<<ceo>>"),
    )
    p["date_phrase"] = phrase
    truth = {
        "ceo": company["ceo"],
        "_macro": {
            1: booking_calls(ranked, route["origin"], route["destination"], day, company["ceo"])
        },
    }
    check = {"type": "booking", "flight_id": booked["id"], "passenger": company["ceo"]}
    return Draft(
        prompt,
        [source, "flights"],
        {"flight_id": booked["id"], "passenger": company["ceo"]},
        check,
        p,
        truth,
        planted=booking_planted(ranked),
    )


def make_book_to_hq(sources: list[str]) -> Callable[[Ctx], Draft]:
    return lambda ctx: book_to_hq(ctx, ctx.choice(sources))


def book_to_hq(ctx: Ctx, source: str) -> Draft:
    """Book the cheapest flight to a company's headquarters city, found first through `source`."""
    pool_routes = [r for r in ctx.world.routes if r["pool"] == ctx.pool]
    dests = {r["destination"] for r in pool_routes}
    companies = [c for c in ctx.world.companies if c["hq"] in dests]
    if not companies:
        raise LookupError("no company headquartered at a destination")
    company = ctx.choice(companies)
    route = ctx.choice([r for r in pool_routes if r["destination"] == company["hq"]])
    route, day, flights = _route_day(ctx, None, route)
    passenger = ctx.person()["name"]
    phrase = date_phrase(ctx.rng, ctx.world.today, date.fromisoformat(day))
    ranked, booked = booking_truth(flights, "cheapest")
    prompt = f"Today is {long_date(ctx.world.today)}. " + ctx.choice([
        f"{passenger} is visiting {company['name']}'s headquarters. Book and confirm the cheapest flight from {route['origin']} to that city {phrase}.",
        f"Book {passenger} on the cheapest flight {phrase} from {route['origin']} to the city where {company['name']} is headquartered, and confirm it.",
    ])  # fmt: skip
    p = plan(
        "",
        step(
            f"Find where {company['name']} is headquartered, then book.",
            lookup_op(source, "hq", company["name"], "hq"),
        ),
        booking_step(route["origin"], "<<hq>>", day, "cheapest", passenger),
    )
    p["date_phrase"] = phrase
    truth = {
        "hq": company["hq"],
        "_macro": {1: booking_calls(ranked, route["origin"], company["hq"], day, passenger)},
    }
    check = {"type": "booking", "flight_id": booked["id"], "passenger": passenger}
    return Draft(
        prompt,
        [source, "flights"],
        {"flight_id": booked["id"], "passenger": passenger},
        check,
        p,
        truth,
        planted=booking_planted(ranked),
    )
