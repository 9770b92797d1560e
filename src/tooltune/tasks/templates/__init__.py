"""Task templates of the built-in world's tool tiers, one module per tool family.

Every template draws entities from one split's pool, words the prompt in one of several ways, and
returns a `draft.Draft`: the prompt, the tool families offered, the verified answer and its check
spec, and the expert's plan. `catalogue.TEMPLATES` lists the templates with their tiers;
`tooltune.tasks.splits` turns drafts into `Task`s. The no-tool tier's templates, which need no
plan, are in `tooltune.tasks.abstention`.

| module | templates |
|---|---|
| `facts` | a company's, person's or place's facts through search, SQL or the registry tools |
| `maths` | arithmetic, equations, integrals and short Python programs |
| `files` | stock lists, sales reports and budget memos in the sandbox, a memo that moved |
| `database` | products and orders, a query written for an older schema |
| `images` | counting shapes, in one image, in two, or into a report file |
| `browser` | the Regional Atlas website |
| `flights` | booking and confirming a flight, when the cheapest one sells out |
| `heldout_tools` | the `heldout_tools` split: tasks for `geo_lookup` and `corp_registry` |

`draft` (what a template is given and returns), `plan` (the plan language, minimal calls) and
`wording` (dates, money, SQL literals) are what the template modules share.
"""
