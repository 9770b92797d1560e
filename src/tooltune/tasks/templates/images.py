"""Counting the shapes of the scene images (all of them, of one colour or of one kind): in one
image, in two at once, or into a report file.
"""

from __future__ import annotations

from tooltune.tasks.templates.draft import Ctx, Draft, num_check
from tooltune.tasks.templates.plan import call, op, plan, step, x_numeric, x_shapes
from tooltune.tasks.world_names import slug


def _shape_question(ctx: Ctx, img: dict) -> tuple[str, str | None, str | None, int]:
    mode = ctx.rng.randrange(3)
    shapes = img["shapes"]
    if mode == 0:
        return "shapes", None, None, len(shapes)
    if mode == 1:
        color = ctx.choice([s["color"] for s in shapes] + ["red", "blue"])
        return f"{color} shapes", color, None, sum(s["color"] == color for s in shapes)
    kind = ctx.choice(["circle", "square", "triangle"])
    return f"{kind}s", None, kind, sum(s["kind"] == kind for s in shapes)


def _detect(path: str, color: str | None, kind: str | None) -> dict:
    """The detection call, filtered to what is asked: the result's "count" is then the answer,
    read off one field rather than counted down a list."""
    filters = {k: v for k, v in (("color", color), ("kind", kind)) if v is not None}
    return call("detect_shapes", path=path, **filters)


def t_shape_count(ctx: Ctx) -> Draft:
    img = ctx.item("images")
    what, color, kind, value = _shape_question(ctx, img)
    prompt = ctx.choice([f"How many {what} are in {img['path']}?", f"Count the {what} in the image {img['path']}.",
                         f"Look at {img['path']}: how many {what} does it show?"])  # fmt: skip
    p = plan(
        f"{img['path']} shows <<v>> {what}.",
        step(
            f"Detect the {what} in {img['path']}.",
            op(_detect(img["path"], color, kind), x_shapes(color, kind), "v"),
        ),
    )
    return Draft(prompt, ["images"], value, num_check(value, 1e-9), p, {"v": value})


def t_two_images(ctx: Ctx) -> Draft:
    imgs = ctx.rng.sample(ctx._pool("images"), 2)
    counts = [len(i["shapes"]) for i in imgs]
    total = sum(counts)
    prompt = ctx.choice([f"How many shapes do {imgs[0]['path']} and {imgs[1]['path']} contain together?",
                         f"Count all shapes in {imgs[0]['path']} and in {imgs[1]['path']}; what is the total?"])  # fmt: skip
    p = plan(
        "<<c0>> + <<c1>> = <<total>> shapes.",
        step("Detect shapes in both images at once, then add.", *[op(call("detect_shapes", path=img["path"]), x_shapes(), f"c{i}") for i, img in enumerate(imgs)]),
        step("Add the counts.", op(call("calculate", expression="<<c0:num>> + <<c1:num>>"), x_numeric(), "total")),
    )  # fmt: skip
    return Draft(prompt, ["images", "math"], total, num_check(total, 1e-9), p,
                 {"c0": counts[0], "c1": counts[1], "total": total}, parallel=2)  # fmt: skip


def t_image_report(ctx: Ctx) -> Draft:
    img = ctx.item("images")
    what, color, kind, value = _shape_question(ctx, img)
    out = f"results/{img['path'].split('/')[-1].removesuffix('.png')}_{slug(what)}.txt"
    prompt = ctx.choice([f"Count the {what} in {img['path']} and save the number to {out}.",
                         f"Write the number of {what} in {img['path']} into the file {out}, then tell me the count."])  # fmt: skip
    p = plan(
        f"There are <<v>> {what}; I wrote it to {out}.",
        step(f"Detect the {what} in {img['path']}, then write the count.", op(_detect(img["path"], color, kind), x_shapes(color, kind), "v")),
        step(f"Save the count to {out}.", op(call("write_file", path=out, content="<<v:raw>>\n"), {"kind": "none"}, "_")),
    )  # fmt: skip
    check = {
        "type": "all",
        "checks": [
            num_check(value, 1e-9),
            {"type": "file", "path": out, "check": num_check(value, 1e-9)},
        ],
    }
    return Draft(prompt, ["images", "files"], value, check, p, {"v": value})
