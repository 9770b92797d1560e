"""Random but plausible function schemas, in pools that keep the splits apart.

The built-in world's templates teach a fixed tool set; BFCL asks for functions a model has never
seen. The schema tasks (`tooltune.tasks.schema_tasks`) offer functions drawn from here, so a
model learns to read a schema rather than memorise a tool. A function is a verb and a noun
(`get_flight_status`, `hotelRoom.book`, `finance.convert_exchange_rate`) with a description and
1-5 parameters drawn from `CONCEPTS`: strings, integers, numbers, booleans, enums, arrays and
objects with nested properties, required or optional (some with a default), their names in the
function's naming style. Formula nouns (`triangle area`, `final velocity`, `compound interest`,
...) take their own numeric parameters instead (`FORMULAS`): the questions of that kind ask a
model to put the numbers it reads into the right arguments, and to call rather than work the
answer out itself.

`function_pool(seed)` is every function of a world seed, each with its split. A (verb, noun) pair
belongs to one split (60/20/20), and all its variants with it, so no test function, nor a
renaming of one, is ever offered in training. Pools are regenerated from the seed, never stored:
the environment finds a task's functions by name (`find_functions`) to run them in an episode.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tooltune.tools.catalogue import TOOL_FAMILY

POOL_VARIANTS = 5  # functions per (verb, noun) pair, in different naming styles
SPLIT_SHARES = (("train", 0.6), ("validation", 0.2), ("test", 0.2))

# verb: (description verb, how a question says it, verb class)
VERBS: dict[str, tuple[str, str]] = {
    "get": ("Retrieve", "get"), "fetch": ("Fetch", "fetch"), "find": ("Find", "find"),
    "search": ("Search for", "search for"), "list": ("List", "list"),
    "create": ("Create", "create"), "update": ("Update", "update"),
    "delete": ("Delete", "delete"), "cancel": ("Cancel", "cancel"), "book": ("Book", "book"),
    "schedule": ("Schedule", "schedule"), "send": ("Send", "send"),
    "calculate": ("Calculate", "calculate"), "compute": ("Compute", "compute"),
    "estimate": ("Estimate", "estimate"),
    "convert": ("Convert", "convert"), "check": ("Check", "check"), "track": ("Track", "track"),
    "translate": ("Translate", "translate"), "rate": ("Rate", "rate"),
    "recommend": ("Recommend", "recommend"), "export": ("Export", "export"),
    "summarize": ("Summarize", "summarize"), "validate": ("Validate", "validate"),
}  # fmt: skip
VERB_CLASSES: dict[str, list[str]] = {
    "record": ["get", "fetch", "find", "list", "update", "delete", "export", "check"],
    "booking": ["book", "cancel", "schedule", "check", "get"],
    "measure": ["get", "calculate", "estimate", "check", "track"],
    "message": ["send", "schedule", "translate", "summarize", "create"],
    "item": ["search", "find", "recommend", "rate", "list", "get"],
    "device": ["check", "update", "get", "schedule", "validate"],
    "formula": ["calculate", "compute", "find", "estimate"],  # parameters from FORMULAS
}
# domain: [(noun phrase, its short word, verb class)]
NOUNS: dict[str, list[tuple[str, str, str]]] = {
    "travel": [("flight status", "flight", "measure"), ("hotel room", "room", "booking"),
               ("train ticket", "ticket", "booking"), ("car rental", "rental", "booking"),
               ("itinerary", "trip", "record"), ("visa requirement", "visa", "record")],
    "finance": [("exchange rate", "rate", "measure"), ("stock quote", "stock", "measure"),
                ("loan payment", "loan", "measure"), ("invoice", "invoice", "record"),
                ("tax estimate", "tax", "measure"), ("expense report", "report", "record")],
    "weather": [("weather forecast", "forecast", "measure"), ("air quality", "air", "measure"),
                ("tide table", "tide", "measure"), ("storm alert", "alert", "message")],
    "health": [("doctor appointment", "appointment", "booking"),
               ("prescription", "prescription", "record"), ("calorie count", "meal", "measure"),
               ("workout plan", "workout", "item")],
    "shop": [("order", "order", "record"), ("shipment", "shipment", "measure"),
             ("product review", "review", "item"), ("coupon", "coupon", "record"),
             ("return request", "return", "record")],
    "media": [("playlist", "playlist", "item"), ("movie showtime", "movie", "item"),
              ("podcast episode", "episode", "item"), ("book recommendation", "book", "item")],
    "food": [("recipe", "recipe", "item"), ("restaurant table", "table", "booking"),
             ("grocery list", "grocery", "record"), ("nutrition facts", "food", "measure")],
    "tech": [("repository", "repo", "record"), ("server status", "server", "device"),
             ("support ticket", "issue", "record"), ("dns record", "domain", "record"),
             ("backup job", "backup", "device")],
    "school": [("course", "course", "item"), ("exam result", "exam", "record"),
               ("library loan", "loan", "booking"), ("study reminder", "reminder", "message")],
    "home": [("thermostat", "thermostat", "device"), ("light schedule", "light", "device"),
             ("energy usage", "meter", "measure"), ("security camera", "camera", "device")],
    "sports": [("match score", "match", "measure"), ("player stats", "player", "record"),
               ("league table", "league", "record"), ("tennis court", "court", "booking")],
    "estate": [("property listing", "property", "item"), ("mortgage rate", "mortgage", "measure"),
               ("rental lease", "lease", "record")],
    "social": [("event invitation", "event", "message"), ("team meeting", "meeting", "booking"),
               ("chat message", "chat", "message"), ("contact card", "contact", "record")],
    "geometry": [("triangle area", "triangle", "formula"), ("circle area", "circle", "formula"),
                 ("sphere volume", "sphere", "formula"), ("hypotenuse", "triangle", "formula"),
                 ("rectangle perimeter", "rectangle", "formula")],
    "physics": [("final velocity", "velocity", "formula"), ("kinetic energy", "energy", "formula"),
                ("travel time", "trip", "formula"), ("net force", "force", "formula"),
                ("density", "object", "formula")],
    "math": [("factorial", "number", "formula"), ("prime factors", "number", "formula"),
             ("quadratic roots", "equation", "formula"),
             ("greatest common divisor", "numbers", "formula"),
             ("compound interest", "investment", "formula"), ("average", "data", "formula"),
             ("standard deviation", "data", "formula")],
}  # fmt: skip
SUFFIXES = ["", "", "details", "info", "v2", "by_id", "now", "summary"]

# fmt: off
CITIES = ["Lisbon", "Nairobi", "Osaka", "Denver", "Krakow", "Lima", "Hanoi", "Perth", "Calgary",
          "Tunis", "Bergen", "Porto", "Quito", "Seville", "Austin", "Dakar", "Zurich", "Cusco"]
PEOPLE = ["Ana Silva", "Tom Becker", "Mei Lin", "Omar Haddad", "Sara Novak", "Luis Ortega",
          "Priya Nair", "Jonas Berg", "Keiko Sato", "Amir Rahimi", "Eva Horak", "Kofi Mensah"]
WORDS = ["urgent", "billing", "travel", "family", "draft", "review", "weekly", "archive", "vip",
         "backend", "outdoor", "vegan", "holiday", "priority", "legacy", "mobile"]
NOTES = ["running ten minutes late", "please call me back", "the package arrived damaged",
         "meeting moved to Friday", "thanks for the quick help", "need a window seat"]
STREETS = ["Harbour Road 12", "Elm Street 4", "Rua Augusta 88", "Mill Lane 3", "King Avenue 210"]
# fmt: on


def _date(r: random.Random) -> str:
    return f"{r.randrange(2025, 2028)}-{r.randrange(1, 13):02d}-{r.randrange(1, 29):02d}"


def _code(r: random.Random) -> str:
    letters = "".join(r.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
    return f"{letters}-{r.randrange(1000, 9999)}"


@dataclass(frozen=True)
class Concept:
    """A kind of parameter: name variants, how a question names it, type and values.
    `{key}` in names, phrase and description stands for the function's noun word."""

    names: tuple[str, ...]
    phrase: str
    description: str
    kind: str  # string | integer | number | boolean | enum | array | object
    draw: Callable[[random.Random], Any] = lambda r: None
    enum: tuple[str, ...] = ()
    items: str = ""  # the item type of an array
    fields: tuple[tuple[str, Concept, bool], ...] = ()  # an object's (name, concept, required)


def _c(
    names: str, phrase: str, description: str, kind: str, draw: Any = None, **kw: Any
) -> Concept:
    return Concept(tuple(names.split()), phrase, description, kind, draw or (lambda r: None), **kw)


_LAT = _c("latitude", "latitude", "Latitude in degrees.", "number",
          lambda r: round(r.uniform(-60, 70), 2))  # fmt: skip
_LON = _c("longitude", "longitude", "Longitude in degrees.", "number",
          lambda r: round(r.uniform(-170, 170), 2))  # fmt: skip
_STREET = _c("street", "street", "Street and number.", "string", lambda r: r.choice(STREETS))
_CITY = _c("city", "city", "City name.", "string", lambda r: r.choice(CITIES))
_POSTCODE = _c("postal_code", "postal code", "Postal code.", "string",
               lambda r: str(r.randrange(10000, 99999)))  # fmt: skip
_MIN = _c("min", "minimum", "Lower bound.", "number", lambda r: float(r.randrange(10, 200)))
_MAX = _c("max", "maximum", "Upper bound.", "number", lambda r: float(r.randrange(300, 2000)))
_W = _c("width", "width", "Width in centimetres.", "integer", lambda r: r.randrange(10, 200))
_H = _c("height", "height", "Height in centimetres.", "integer", lambda r: r.randrange(10, 200))
_D = _c("depth", "depth", "Depth in centimetres.", "integer", lambda r: r.randrange(5, 90))

CONCEPTS: list[Concept] = [
    _c("city city_name location", "city", "Name of the city, e.g. Lisbon.", "string",
       lambda r: r.choice(CITIES)),
    _c("origin from_city departure_city", "departure city", "City the journey starts from.",
       "string", lambda r: r.choice(CITIES)),
    _c("destination to_city arrival_city", "arrival city", "City the journey ends in.",
       "string", lambda r: r.choice(CITIES)),
    _c("date start_date on_date", "date", "Date in YYYY-MM-DD format.", "string", _date),
    _c("time start_time at_time", "time", "Time of day, HH:MM on a 24-hour clock.", "string",
       lambda r: f"{r.randrange(6, 23):02d}:{r.choice(['00', '15', '30', '45'])}"),
    _c("name full_name customer_name", "name", "Full name of the person.", "string",
       lambda r: r.choice(PEOPLE)),
    _c("email email_address recipient", "email address", "E-mail address to use.", "string",
       lambda r: f"{r.choice(PEOPLE).split()[0].lower()}@example.com"),
    _c("{key}_id reference {key}_code", "{key} reference", "Identifier of the {key}, e.g. AB-1234.",
       "string", _code),
    _c("query keyword search_term", "search term", "Free-text search term.", "string",
       lambda r: r.choice(WORDS)),
    _c("message text note", "message text", "Text of the message.", "string",
       lambda r: r.choice(NOTES)),
    _c("limit max_results count", "maximum number of results", "How many results to return.",
       "integer", lambda r: r.randrange(1, 51)),
    _c("quantity qty units", "quantity", "Number of units.", "integer", lambda r: r.randrange(1, 21)),
    _c("year", "year", "Four-digit year.", "integer", lambda r: r.randrange(1990, 2031)),
    _c("duration_minutes minutes duration", "duration in minutes", "Length in minutes.",
       "integer", lambda r: r.randrange(5, 241, 5)),
    _c("guests party_size num_people", "number of people", "How many people are included.",
       "integer", lambda r: r.randrange(1, 13)),
    _c("amount value total", "amount", "Amount of money.", "number",
       lambda r: round(r.uniform(1, 5000), 2)),
    _c("weight_kg weight mass_kg", "weight in kilograms", "Weight in kilograms.", "number",
       lambda r: round(r.uniform(0.1, 80), 1)),
    _c("rate percentage interest_rate", "rate in percent", "A rate in percent.", "number",
       lambda r: round(r.uniform(0.5, 25), 2)),
    _c("distance_km radius_km distance", "distance in kilometres", "Distance in kilometres.",
       "number", lambda r: round(r.uniform(0.5, 900), 1)),
    _c("currency currency_code", "currency", "Three-letter currency code.", "enum",
       enum=("USD", "EUR", "GBP", "JPY", "CHF", "CAD")),
    _c("unit units temperature_unit", "temperature unit", "Unit of temperature.", "enum",
       enum=("celsius", "fahrenheit", "kelvin")),
    _c("language lang locale", "language", "Language code.", "enum",
       enum=("en", "fr", "de", "es", "ja", "pt")),
    _c("priority urgency level", "priority", "How urgent it is.", "enum",
       enum=("low", "normal", "high", "critical")),
    _c("sort_order order sort", "sort order", "Order of the results.", "enum",
       enum=("ascending", "descending")),
    _c("format output_format file_type", "output format", "Format of the output.", "enum",
       enum=("json", "csv", "pdf", "xml")),
    _c("mode travel_mode transport", "travel mode", "How to travel.", "enum",
       enum=("driving", "walking", "cycling", "transit")),
    _c("include_details verbose detailed", "detailed output", "Whether to return every detail.",
       "boolean"),
    _c("notify send_notification alert", "notifications", "Whether to send a notification.",
       "boolean"),
    _c("flexible refundable allow_changes", "flexible terms", "Whether changes are allowed later.",
       "boolean"),
    _c("tags labels keywords", "tags", "Labels to attach.", "array",
       lambda r: r.sample(WORDS, r.randrange(2, 4)), items="string"),
    _c("ids item_ids record_ids", "record numbers", "Numeric record identifiers.", "array",
       lambda r: r.sample(range(100, 1000), r.randrange(2, 5)), items="integer"),
    _c("readings values measurements", "readings", "Measured values.", "array",
       lambda r: [round(r.uniform(0, 100), 1) for _ in range(r.randrange(2, 5))], items="number"),
    _c("coordinates position geo_point", "coordinates", "A point on the map.", "object",
       fields=(("latitude", _LAT, True), ("longitude", _LON, True))),
    _c("address shipping_address location_address", "address", "A postal address.", "object",
       fields=(("street", _STREET, True), ("city", _CITY, True), ("postal_code", _POSTCODE, False))),
    _c("price_range budget_range range", "price range", "Lowest and highest price.", "object",
       fields=(("min", _MIN, True), ("max", _MAX, True))),
    _c("dimensions size box_size", "dimensions", "Size of the item.", "object",
       fields=(("width", _W, True), ("height", _H, True), ("depth", _D, False))),
]  # fmt: skip
ID_CONCEPT = CONCEPTS[7]


# Formulas (BFCL's questions are often of this kind): each noun's own numeric parameters, all
# required, in the order a formula reads them.
def _whole(names: str, phrase: str, description: str, low: int, high: int) -> Concept:
    return _c(names, phrase, description, "integer", lambda r: r.randrange(low, high))


def _real(names: str, phrase: str, description: str, low: float, high: float,
          digits: int = 1) -> Concept:  # fmt: skip
    return _c(names, phrase, description, "number", lambda r: round(r.uniform(low, high), digits))


# fmt: off
_BASE = _whole("base base_length", "base", "Length of the base.", 2, 60)
_TALL = _whole("height", "height", "Height, in the unit of the base.", 2, 60)
_RADIUS = _real("radius r", "radius", "Radius in metres.", 0.5, 50)
_SIDE_A = _whole("side_a leg_a a", "first side", "Length of the first side.", 1, 40)
_SIDE_B = _whole("side_b leg_b b", "second side", "Length of the second side.", 1, 40)
_LONG = _real("length", "length", "Length in metres.", 1, 90)
_WIDE = _real("width", "width", "Width in metres.", 1, 90)
_V0 = _c("initial_velocity initial_speed v0", "initial velocity", "Starting velocity in m/s.",
         "number", lambda r: float(r.randrange(0, 40)))
_ACCEL = _real("acceleration accel", "acceleration", "Acceleration in m/s^2.", 0.5, 15)
_SECONDS = _whole("time seconds duration_s", "time in seconds", "Elapsed time in seconds.", 1, 121)
_MASS = _real("mass mass_kg", "mass in kilograms", "Mass in kilograms.", 0.1, 500)
_SPEED = _real("velocity speed", "velocity", "Velocity in m/s.", 1, 60)
_METRES = _whole("distance distance_m", "distance in metres", "Distance in metres.", 10, 5001)
_VOLUME = _real("volume volume_m3", "volume in cubic metres", "Volume in cubic metres.", 0.01, 20, 2)
_WHOLE = _whole("number n value", "number", "A positive whole number.", 2, 200)
_COEF = [_c(f"{x} coef_{x} coefficient_{x}", f"coefficient {x}", f"Coefficient {x} of ax^2 + bx + c.",
            "integer", lambda r: r.choice([v for v in range(-12, 13) if v])) for x in "abc"]
_FIRST = _whole("num1 first_number x", "first number", "The first number.", 2, 500)
_SECOND = _whole("num2 second_number y", "second number", "The second number.", 2, 500)
_PRINCIPAL = _c("principal initial_amount", "principal", "Amount invested at the start.",
                "integer", lambda r: r.randrange(1000, 100001, 500))
_ANNUAL = _real("annual_rate interest_rate", "annual interest rate",
                "Yearly rate as a decimal, e.g. 0.05.", 0.01, 0.12, 3)
_YEARS = _whole("years time_years", "number of years", "How many years.", 1, 31)
_PERIODS = _c("compounds_per_year periods", "compounding periods per year",
              "How often interest is added each year.", "integer", lambda r: r.choice([1, 4, 12]))
_NUMBERS = _c("numbers values data", "numbers", "The numbers to use.", "array",
              lambda r: [r.randrange(1, 100) for _ in range(r.randrange(3, 7))], items="integer")
FORMULAS: dict[str, tuple[Concept, ...]] = {
    "triangle area": (_BASE, _TALL), "circle area": (_RADIUS,), "sphere volume": (_RADIUS,),
    "hypotenuse": (_SIDE_A, _SIDE_B), "rectangle perimeter": (_LONG, _WIDE),
    "final velocity": (_V0, _ACCEL, _SECONDS), "kinetic energy": (_MASS, _SPEED),
    "travel time": (_METRES, _SPEED), "net force": (_MASS, _ACCEL), "density": (_MASS, _VOLUME),
    "factorial": (_WHOLE,), "prime factors": (_WHOLE,), "quadratic roots": tuple(_COEF),
    "greatest common divisor": (_FIRST, _SECOND),
    "compound interest": (_PRINCIPAL, _ANNUAL, _YEARS, _PERIODS),
    "average": (_NUMBERS,), "standard deviation": (_NUMBERS,),
}
_DECIMALS = _whole("decimals round_to precision", "decimal places",
                   "Digits after the decimal point.", 0, 5)
# fmt: on


@dataclass
class Param:
    """One parameter of a generated function: its name, concept and place in the schema."""

    name: str
    concept: Concept
    phrase: str
    required: bool
    default: Any = None
    has_default: bool = False
    fields: list[Param] = field(default_factory=list)  # an object's properties


@dataclass
class SchemaFunction:
    """A generated function: its doc (BFCL / OpenAI form, JSON Schema types) and what the
    question writer needs (the verb and noun as a question says them, the parameters)."""

    name: str
    doc: dict
    verb: str
    noun: str
    noun_key: str
    params: list[Param]
    split: str
    pair: str  # "verb noun": every variant of one pair is in one split


def _camel(words: str) -> str:
    head, *rest = words.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _styled(name: str, style: str) -> str:
    return _camel(name) if style == "camel" else name


def _function_name(r: random.Random, verb: str, noun: str, domain: str, style: str) -> str:
    noun_snake = noun.replace(" ", "_")
    suffix = r.choice(SUFFIXES)
    base = f"{verb}_{noun_snake}" + (f"_{suffix}" if suffix else "")
    if style == "dotted":
        return (
            f"{domain}.{verb}_{noun_snake}" if r.random() < 0.5 else f"{_camel(noun_snake)}.{verb}"
        )
    return _styled(base, style)


def _value_schema(concept: Concept, description: str) -> dict:
    kinds = {"enum": "string", "array": "array", "object": "object"}
    schema: dict[str, Any] = {"type": kinds.get(concept.kind, concept.kind),
                              "description": description}  # fmt: skip
    if concept.kind == "enum":
        schema["enum"] = list(concept.enum)
    if concept.kind == "array":
        schema["items"] = {"type": concept.items}
    return schema


def _make_param(r: random.Random, concept: Concept, key: str, style: str, used: set[str],
                required: bool) -> Param | None:  # fmt: skip
    names = [_styled(n.replace("{key}", key), style) for n in concept.names]
    names = [n for n in names if n not in used]
    if not names:
        return None
    param = Param(r.choice(names), concept, concept.phrase.replace("{key}", key), required)
    if concept.kind == "object":
        for sub, sub_concept, sub_required in concept.fields:
            param.fields.append(Param(_styled(sub, style), sub_concept, sub_concept.phrase,
                                      sub_required))  # fmt: skip
    elif not required and r.random() < 0.6:
        param.has_default = True
        param.default = draw_value(r, concept)
        if concept.kind == "boolean":
            param.default = False
    return param


def draw_value(r: random.Random, concept: Concept) -> Any:
    """A random value of a concept (an object's are drawn field by field by the caller)."""
    if concept.kind == "enum":
        return r.choice(concept.enum)
    if concept.kind == "boolean":
        return r.random() < 0.5
    return concept.draw(r)


def _param_schema(param: Param, key: str) -> dict:
    description = param.concept.description.replace("{key}", key)
    schema = _value_schema(param.concept, description)
    if param.fields:
        schema["properties"] = {
            f.name: _value_schema(f.concept, f.concept.description) for f in param.fields
        }
        schema["required"] = [f.name for f in param.fields if f.required]
    if param.has_default:
        schema["default"] = param.default
    return schema


def make_function(r: random.Random, verb: str, domain: str, noun: tuple[str, str, str],
                  split: str) -> SchemaFunction:  # fmt: skip
    """One random function for a (verb, noun) pair: name, description and 1-5 parameters."""
    phrase, key, _cls = noun
    style = r.choices(["snake", "camel", "dotted"], [0.55, 0.25, 0.2])[0]
    name = _function_name(r, verb, phrase, domain, style)
    param_style = "camel" if style == "camel" else "snake"
    n = r.choices([1, 2, 3, 4, 5], [0.15, 0.3, 0.3, 0.15, 0.1])[0]
    concepts = r.sample(CONCEPTS, n)
    if _cls in ("record", "booking", "device") and ID_CONCEPT not in concepts and r.random() < 0.5:
        concepts = [ID_CONCEPT, *concepts[: n - 1]]  # most records are named by an id
    required = [i == 0 or r.random() < 0.55 for i in range(len(concepts))]
    if _cls == "formula":
        concepts = [*FORMULAS[phrase], _DECIMALS][: len(FORMULAS[phrase]) + (r.random() < 0.3)]
        required = [c is not _DECIMALS for c in concepts]
    params: list[Param] = []
    used: set[str] = set()
    for concept, needed in zip(concepts, required, strict=True):
        param = _make_param(r, concept, key, param_style, used, needed)
        if param is not None:
            used.add(param.name)
            params.append(param)
    described, _ = VERBS[verb]
    article = "" if phrase.endswith("s") or phrase in ("air quality", "energy usage") else "a "
    extra = r.choice(["", "", f" Part of the {domain} service.", " Returns a confirmation id."])
    doc = {
        "name": name,
        "description": f"{described} {article}{phrase}.{extra}",
        "parameters": {
            "type": "object",
            "properties": {p.name: _param_schema(p, key) for p in params},
            "required": [p.name for p in params if p.required],
        },
    }
    return SchemaFunction(name, doc, VERBS[verb][1], phrase, key, params, split, f"{verb} {phrase}")


def _pairs() -> list[tuple[str, str, tuple[str, str, str]]]:
    return [(verb, domain, noun) for domain, nouns in NOUNS.items() for noun in nouns
            for verb in VERB_CLASSES[noun[2]]]  # fmt: skip


@functools.cache
def function_pool(seed: int = 0) -> tuple[SchemaFunction, ...]:
    """Every generated function of a world seed, each pair's variants in one split."""
    r = random.Random(f"schema-pool:{seed}")
    pairs = _pairs()
    r.shuffle(pairs)
    taken = set(TOOL_FAMILY)
    out: list[SchemaFunction] = []
    start = 0
    for k, (split, share) in enumerate(SPLIT_SHARES):
        end = len(pairs) if k == len(SPLIT_SHARES) - 1 else start + round(share * len(pairs))
        for verb, domain, noun in pairs[start:end]:
            for _ in range(POOL_VARIANTS):
                function = make_function(r, verb, domain, noun, split)
                if function.name not in taken and function.params:
                    taken.add(function.name)
                    out.append(function)
        start = end
    return tuple(out)


@functools.cache
def _by_name(seed: int) -> dict[str, SchemaFunction]:
    return {f.name: f for f in function_pool(seed)}


@functools.cache
def _by_split(seed: int) -> dict[str, list[SchemaFunction]]:
    out: dict[str, list[SchemaFunction]] = {split: [] for split, _ in SPLIT_SHARES}
    for function in function_pool(seed):
        out[function.split].append(function)
    return out


def pool_of(split: str, seed: int = 0) -> list[SchemaFunction]:
    """The functions a split's tasks may offer (empty for a split without schema tasks)."""
    return _by_split(seed).get(split, [])


def find_functions(names: list[str], seed: int = 0) -> dict[str, SchemaFunction]:
    """The generated functions of `seed` among `names` (names that are none are left out)."""
    index = _by_name(seed)
    return {n: index[n] for n in names if n in index}
