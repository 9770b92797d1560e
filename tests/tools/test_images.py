"""Image tools: generator/detector agreement, the tools through the registry, and bad input."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tooltune.registry import ToolError, ToolRegistry
from tooltune.tools.images import (
    PALETTE,
    detect_shapes,
    draw_shapes,
    load_image,
    make_image_tools,
    random_shapes,
)
from tooltune.types import ToolCall


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height but carries almost no data (a bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    (root / "images").mkdir(parents=True)
    shapes = [
        {"kind": "circle", "color": "red", "x": 50, "y": 50, "size": 40},
        {"kind": "square", "color": "blue", "x": 150, "y": 60, "size": 30},
        {"kind": "triangle", "color": "green", "x": 100, "y": 180, "size": 50},
    ]
    draw_shapes(root / "images" / "shapes.png", shapes)
    half = Image.new("RGB", (100, 100), "white")
    half.paste((220, 30, 30), (0, 0, 100, 25))  # a quarter red
    half.save(root / "images" / "quarter.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def registry(sandbox: Path) -> ToolRegistry:
    return ToolRegistry(make_image_tools(sandbox))


def run(registry: ToolRegistry, tool_name: str, /, **arguments):
    return registry.execute(ToolCall(id="1", name=tool_name, arguments=arguments))


@pytest.mark.parametrize("seed", range(60))
def test_detect_matches_generator(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    shapes = random_shapes(rng, rng.randint(1, 8), min_size=10, max_size=60)
    path = draw_shapes(tmp_path / "s.png", shapes)
    found = detect_shapes(path)
    assert found["count"] == len(shapes)
    assert found["background"] == "white"
    expected = sorted((s["kind"], s["color"]) for s in shapes)
    assert sorted((s["kind"], s["color"]) for s in found["shapes"]) == expected
    for shape in shapes:  # every drawn shape is found at its position
        near = [
            f
            for f in found["shapes"]
            if abs(f["center"][0] - shape["x"]) <= 1 and abs(f["center"][1] - shape["y"]) <= 1
        ]
        assert len(near) == 1 and near[0]["kind"] == shape["kind"]
    centers = [(f["center"][1], f["center"][0]) for f in found["shapes"]]
    assert centers == sorted(centers)


def test_detect_on_other_background_and_jpeg(tmp_path: Path) -> None:
    shapes = random_shapes(7, 5)
    found = detect_shapes(draw_shapes(tmp_path / "a.jpg", shapes, background="gray"))
    assert found["background"] == "gray"
    assert sorted((s["kind"], s["color"]) for s in found["shapes"]) == sorted(
        (s["kind"], s["color"]) for s in shapes
    )


def test_bbox_and_area_of_a_square(tmp_path: Path) -> None:
    path = draw_shapes(tmp_path / "sq.png", [{"kind": "square", "color": "black", "x": 40,
                                              "y": 30, "size": 20}])  # fmt: skip
    (shape,) = detect_shapes(path)["shapes"]
    assert shape["bbox"] == [30, 20, 50, 40]
    assert shape["area"] == 400
    assert shape["center"] == [40, 30]


def test_draw_rejects_unknown_kind_and_colour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        draw_shapes(tmp_path / "x.png", [{"kind": "hexagon", "color": "red", "x": 5, "y": 5,
                                          "size": 8}])  # fmt: skip
    with pytest.raises(ValueError, match="colour"):
        draw_shapes(tmp_path / "x.png", [{"kind": "circle", "color": "pink", "x": 5, "y": 5,
                                          "size": 8}])  # fmt: skip


def test_random_shapes_do_not_overlap() -> None:
    shapes = random_shapes(3, 10)
    boxes = [(s["x"] - s["size"] // 2, s["y"] - s["size"] // 2, s["size"]) for s in shapes]
    for i, (l1, t1, s1) in enumerate(boxes):
        for l2, t2, s2 in boxes[i + 1 :]:
            assert l1 + s1 <= l2 or l2 + s2 <= l1 or t1 + s1 <= t2 or t2 + s2 <= t1
    with pytest.raises(ValueError, match="could not place"):
        random_shapes(0, 200, size=(64, 64))


def test_image_info(registry: ToolRegistry) -> None:
    response = run(registry, "image_info", path="images/shapes.png")
    assert response.success, response.error
    assert response.result["width"] == 256 and response.result["height"] == 256
    assert response.result["format"] == "PNG" and response.result["mode"] == "RGB"


def test_image_crop_writes_inside_root(registry: ToolRegistry, sandbox: Path) -> None:
    response = run(registry, "image_crop", path="images/shapes.png", left=30, top=30, right=70,
                   bottom=70, save_as="crops/red.png")  # fmt: skip
    assert response.success, response.error
    assert response.result == {"saved": "crops/red.png", "width": 40, "height": 40}
    crop = Image.open(sandbox / "crops" / "red.png")
    assert crop.size == (40, 40)
    assert crop.getpixel((20, 20)) == PALETTE["red"]
    found = run(registry, "detect_shapes", path="crops/red.png")
    assert found.result["shapes"][0]["color"] == "red"


def test_image_crop_goes_to_the_overlay(sandbox: Path, tmp_path: Path) -> None:
    """With overlays, a crop lands in the episode's overlay, is readable there only, and the
    shared root never changes; a crop may shadow a root image for its own episode."""
    before = sorted(p.relative_to(sandbox) for p in sandbox.rglob("*"))
    a = ToolRegistry(make_image_tools(sandbox, overlay=tmp_path / "ep-a"))
    b = ToolRegistry(make_image_tools(sandbox, overlay=tmp_path / "ep-b"))
    assert not (tmp_path / "ep-a").exists()  # created on the first save only
    box = {"left": 30, "top": 30, "right": 70, "bottom": 70}
    saved = run(a, "image_crop", path="images/shapes.png", save_as="crops/red.png", **box)
    assert saved.success, saved.error
    assert (tmp_path / "ep-a" / "crops" / "red.png").is_file()
    assert run(a, "detect_shapes", path="crops/red.png").result["shapes"][0]["color"] == "red"
    assert run(a, "image_info", path="crops/red.png").result["width"] == 40
    missing = run(b, "image_info", path="crops/red.png")
    assert not missing.success and "does not exist" in missing.error
    assert run(b, "image_info", path="images/shapes.png").success  # root images stay shared
    shadow = run(a, "image_crop", path="images/shapes.png", save_as="images/shapes.png", **box)
    assert shadow.success, shadow.error
    assert run(a, "image_info", path="images/shapes.png").result["width"] == 40
    assert run(b, "image_info", path="images/shapes.png").result["width"] == 256
    escape = run(b, "image_crop", path="images/shapes.png", save_as="../x.png", **box)
    assert not escape.success and "outside the sandbox" in escape.error
    assert sorted(p.relative_to(sandbox) for p in sandbox.rglob("*")) == before


@pytest.mark.parametrize(
    "box", [(0, 0, 0, 10), (10, 10, 5, 20), (-1, 0, 10, 10), (0, 0, 257, 10), (0, 0, 10, 300)]
)
def test_image_crop_rejects_bad_boxes(registry: ToolRegistry, box) -> None:
    left, top, right, bottom = box
    response = run(registry, "image_crop", path="images/shapes.png", left=left, top=top,
                   right=right, bottom=bottom, save_as="c.png")  # fmt: skip
    assert not response.success and "crop box" in response.error


def test_image_crop_rejects_bad_targets(registry: ToolRegistry) -> None:
    box = {"left": 0, "top": 0, "right": 10, "bottom": 10}
    bad_ext = run(registry, "image_crop", path="images/shapes.png", save_as="c.exe", **box)
    assert not bad_ext.success and "save_as" in bad_ext.error
    escape = run(registry, "image_crop", path="images/shapes.png", save_as="../out.png", **box)
    assert not escape.success and "outside the sandbox" in escape.error


def test_image_histogram_counts_every_pixel(registry: ToolRegistry) -> None:
    response = run(registry, "image_histogram", path="images/quarter.png", bins=4)
    assert response.success, response.error
    result = response.result
    assert result["pixels"] == 10000
    for channel in ("red", "green", "blue"):
        assert sum(result[channel]) == 10000 and len(result[channel]) == 4
    # 2500 red pixels (220, 30, 30) and 7500 white ones.
    assert result["red"] == [0, 0, 0, 10000]
    assert result["green"] == [2500, 0, 0, 7500]
    bad = run(registry, "image_histogram", path="images/quarter.png", bins=0)
    assert not bad.success and "bins" in bad.error


def test_image_dominant_colors(registry: ToolRegistry) -> None:
    response = run(registry, "image_dominant_colors", path="images/quarter.png", k=3)
    assert response.success, response.error
    assert response.result["colors"] == [
        {"color": "white", "fraction": 0.75},
        {"color": "red", "fraction": 0.25},
    ]
    bad = run(registry, "image_dominant_colors", path="images/quarter.png", k=0)
    assert not bad.success


def test_detect_shapes_tool(registry: ToolRegistry) -> None:
    response = run(registry, "detect_shapes", path="images/shapes.png")
    assert response.success, response.error
    assert [(s["kind"], s["color"]) for s in response.result["shapes"]] == [
        ("circle", "red"),
        ("square", "blue"),
        ("triangle", "green"),
    ]


def test_detect_shapes_filters_by_colour_and_kind(registry: ToolRegistry) -> None:
    """With a filter the result lists only matching shapes and "count" is how many matched."""
    red = run(registry, "detect_shapes", path="images/shapes.png", color="red")
    assert red.result["count"] == 1 and red.result["shapes"][0]["kind"] == "circle"
    none = run(registry, "detect_shapes", path="images/shapes.png", color="blue", kind="circle")
    assert none.success and none.result["count"] == 0 and none.result["shapes"] == []
    squares = run(registry, "detect_shapes", path="images/shapes.png", kind="square")
    assert [s["color"] for s in squares.result["shapes"]] == ["blue"]
    unset = run(registry, "detect_shapes", path="images/shapes.png", color=None, kind=None)
    assert unset.success and unset.result["count"] == 3  # null is "no filter", as the schema says
    bad = run(registry, "detect_shapes", path="images/shapes.png", color="pink")
    assert not bad.success and "red" in bad.error  # the error lists the colours it knows
    schema = registry.get("detect_shapes").parameters["properties"]["color"]
    assert set(schema["enum"]) == {*PALETTE, None}  # every colour the detector can name, or none


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "absolute"),
        ("../../etc/passwd", "outside the sandbox"),
        ("images/../../x.png", "outside the sandbox"),
        ("images/missing.png", "does not exist"),
        ("notes.txt", "not an image"),
        ("images", "not a file"),
        ("", "non-empty"),
    ],
)
def test_bad_paths(registry: ToolRegistry, path: str, message: str) -> None:
    response = run(registry, "image_info", path=path)
    assert not response.success
    assert message in response.error


def test_symlink_out_of_root_is_refused(registry: ToolRegistry, sandbox: Path, tmp_path: Path):
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    (sandbox / "images" / "link.png").symlink_to(outside)
    response = run(registry, "image_info", path="images/link.png")
    assert not response.success and "outside the sandbox" in response.error


def test_malformed_images(sandbox: Path, registry: ToolRegistry) -> None:
    good = (sandbox / "images" / "shapes.png").read_bytes()
    (sandbox / "trunc.png").write_bytes(good[: len(good) // 2])
    (sandbox / "random.png").write_bytes(random.Random(0).randbytes(5000))
    (sandbox / "bomb.png").write_bytes(png_with_header(50000, 50000))
    (sandbox / "mid.png").write_bytes(png_with_header(6000, 6000))
    expectations = {
        "trunc.png": "truncated or malformed",
        "random.png": "not an image",
        "bomb.png": "decompression bomb",
        "mid.png": "decompression bomb",
    }
    for name, message in expectations.items():
        for tool_name in ("image_info", "detect_shapes", "image_histogram"):
            response = run(registry, tool_name, path=name)
            assert not response.success, (name, tool_name)
            assert message in response.error, (name, response.error)


def test_load_image_cap_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(path)
    assert load_image(path).size == (200, 200)
    with pytest.raises(ToolError, match="decompression bomb"):
        load_image(path, max_pixels=1000)


def test_transparent_png_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((30, 80, 220, 255), (10, 10, 30, 30))
    image.save(tmp_path / "t.png")
    found = detect_shapes(tmp_path / "t.png")
    assert found["background"] == "white"
    assert [(s["kind"], s["color"]) for s in found["shapes"]] == [("square", "blue")]
