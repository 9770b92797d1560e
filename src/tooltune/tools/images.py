"""Image tools over a sandbox directory, and the shape-image generator of the built-in world.

The model inspects images through small, checkable operations: size and format, crops, colour
histograms, dominant colours named from a fixed palette, and shape detection. `draw_shapes`
makes the world's images and `detect_shapes` recovers their contents by real image analysis
(connected components of non-background colour, kind from how much of its box a blob fills),
so a task's answer can be checked against what the generator drew.

Paths are relative to the sandbox root and cannot leave it (no absolute paths, no `..`, no
symlinks pointing out). Files that are not images, truncated or malformed files, and
decompression bombs (a tiny file declaring a huge canvas) are refused before any pixel is read.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from tooltune.registry import ToolDefinition, ToolError, tool

# The palette shapes are drawn from; detection names colours by the nearest entry.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "yellow": (245, 215, 20),
    "purple": (140, 50, 170),
    "orange": (245, 135, 20),
    "black": (20, 20, 20),
}
ShapeColor = Literal["red", "green", "blue", "yellow", "purple", "orange", "black"]
ShapeKind = Literal["circle", "square", "triangle"]
# Colours that may also appear as backgrounds; used when naming dominant colours.
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    **PALETTE,
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
SHAPE_KINDS = ("circle", "square", "triangle")
MAX_PIXELS = 25_000_000  # refuse larger canvases: a decompression bomb declares billions
MAX_FILE_BYTES = 20_000_000
MAX_DETECT_PIXELS = 4_000_000
MIN_SHAPE_AREA = 12  # smaller blobs are noise (stray pixels, compression artefacts)
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP",
                ".webp": "WEBP"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


def _color(value: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(value, str):
        if value not in NAMED_COLORS:
            raise ValueError(f"unknown colour {value!r}; use one of {', '.join(NAMED_COLORS)}")
        return NAMED_COLORS[value]
    return tuple(int(c) for c in value)  # type: ignore[return-value]


def _shape_box(shape: dict) -> tuple[int, int, int, int]:
    """Inclusive pixel box (l, t, r, b) a shape is drawn in: `size` pixels wide, centred on x, y."""
    size = int(shape["size"])
    left, top = int(shape["x"]) - size // 2, int(shape["y"]) - size // 2
    return left, top, left + size - 1, top + size - 1


def draw_shapes(
    path: str | Path,
    shapes: list[dict],
    size: tuple[int, int] = (256, 256),
    background: str | tuple[int, int, int] = "white",
) -> Path:
    """Draw filled shapes ({"kind", "color", "x", "y", "size"}) on a plain background; save it.

    No anti-aliasing, so every shape pixel has exactly its palette colour.
    """
    image = Image.new("RGB", tuple(size), _color(background))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        kind, color = shape["kind"], shape["color"]
        if kind not in SHAPE_KINDS:
            raise ValueError(f"unknown shape kind {kind!r}; use one of {SHAPE_KINDS}")
        if color not in PALETTE:
            raise ValueError(f"unknown shape colour {color!r}; use one of {', '.join(PALETTE)}")
        if int(shape["size"]) < 4:
            raise ValueError("shapes must be at least 4 pixels across")
        left, top, right, bottom = _shape_box(shape)
        fill = PALETTE[color]
        if kind == "circle":
            draw.ellipse([left, top, right, bottom], fill=fill)
        elif kind == "square":
            draw.rectangle([left, top, right, bottom], fill=fill)
        else:
            apex = (left + right) / 2
            draw.polygon([(apex, top), (left, bottom), (right, bottom)], fill=fill)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    """True when two inclusive boxes are more than `gap` pixels apart horizontally or vertically."""
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def random_shapes(
    seed: int | random.Random,
    count: int,
    size: tuple[int, int] = (256, 256),
    min_size: int = 16,
    max_size: int = 56,
    gap: int = 4,
) -> list[dict]:
    """`count` non-overlapping random shapes (boxes at least `gap` px apart) inside the canvas."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    width, height = size
    placed: list[dict] = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        for _attempt in range(500):
            s = rng.randint(min_size, max_size)
            x = rng.randint(s // 2 + 1, width - s + s // 2 - 2)
            y = rng.randint(s // 2 + 1, height - s + s // 2 - 2)
            shape = {"kind": rng.choice(SHAPE_KINDS), "color": rng.choice(list(PALETTE)),
                     "x": x, "y": y, "size": s}  # fmt: skip
            box = _shape_box(shape)
            if all(_apart(box, other, gap) for other in boxes):
                placed.append(shape)
                boxes.append(box)
                break
        else:
            raise ValueError(f"could not place {count} shapes on a {width}x{height} canvas")
    return placed


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image, or raise ToolError saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"{path.name} is not a file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ToolError(f"{path.name} is larger than {MAX_FILE_BYTES // 1_000_000} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ToolError(
                        f"refused: {path.name} declares {width}x{height} pixels, more than the "
                        f"limit of {max_pixels} (possible decompression bomb)"
                    )
                image.load()
                return image.copy() if image.format is None else _keep_format(image)
    except ToolError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ToolError(
            f"refused: {path.name} is too large (possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise ToolError(f"{path.name} is not an image (unrecognised format)") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... on bad data
        raise ToolError(
            f"{path.name} is truncated or malformed and cannot be decoded ({type(exc).__name__})"
        ) from None


def _keep_format(image: Image.Image) -> Image.Image:
    copy = image.copy()
    copy.format = image.format  # copy() drops it; image_info reports it
    return copy


def _rgb(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 array; transparent areas are composited onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        base = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(base, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _nearest(pixels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Index of the nearest colour (Euclidean RGB) for every pixel of an (..., 3) array."""
    diff = pixels[..., None, :].astype(np.int32) - colors[None, :, :].astype(np.int32)
    return np.argmin((diff * diff).sum(-1), axis=-1)


# --------------------------------------------------------------------------------------------
# Shape detection
# --------------------------------------------------------------------------------------------


def _background(rgb: np.ndarray) -> tuple[int, int, int]:
    """The most common colour along the border."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    colors, counts = np.unique(border, axis=0, return_counts=True)
    return tuple(int(c) for c in colors[np.argmax(counts)])  # type: ignore[return-value]


def _components(labels: np.ndarray) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """8-connected components of equal non-negative labels, as (label, runs (row, start, end)).

    Works on horizontal runs with union-find, which is fast in pure numpy + Python.
    """
    runs: list[tuple[int, int, int, int]] = []  # (row, start, end exclusive, label)
    row_runs: list[list[int]] = []
    for y in range(labels.shape[0]):
        row = labels[y]
        change = np.flatnonzero(np.diff(row)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [row.shape[0]]))
        ids = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if row[s] >= 0:
                ids.append(len(runs))
                runs.append((y, s, e, int(row[s])))
        row_runs.append(ids)
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, len(row_runs)):
        above = row_runs[y - 1]
        j = 0
        for i in row_runs[y]:
            _, s, e, label = runs[i]
            while j < len(above) and runs[above[j]][2] < s:  # ends before s - 1 + 1
                j += 1
            k = j
            while k < len(above) and runs[above[k]][1] <= e:  # 8-connected: touching diagonally
                if runs[above[k]][3] == label:
                    parent[find(i)] = find(above[k])
                k += 1
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for i, (y, s, e, _label) in enumerate(runs):
        groups.setdefault(find(i), []).append((y, s, e))
    return [(runs[root][3], members) for root, members in groups.items()]


def _classify(mask: np.ndarray) -> str:
    """Shape kind of a blob from its bounding-box mask: squares fill their box, circles about
    pi/4 of it, triangles about half; the corners separate the borderline cases."""
    h, w = mask.shape
    fill = mask.mean()
    ch, cw = max(h // 6, 1), max(w // 6, 1)
    top = (mask[:ch, :cw].mean() + mask[:ch, -cw:].mean()) / 2
    bottom = (mask[-ch:, :cw].mean() + mask[-ch:, -cw:].mean()) / 2
    if fill > 0.9 or min(top, bottom) > 0.7:
        return "square"
    if fill < 0.65 or bottom - top > 0.5:
        return "triangle"
    return "circle"


def detect_shapes(path: str | Path, max_pixels: int = MAX_DETECT_PIXELS) -> dict[str, Any]:
    """Find the coloured shapes on a plain background.

    Returns `{"count", "background", "shapes": [{"kind", "color", "center": [x, y],
    "bbox": [left, top, right, bottom], "area"}]}`, sorted top to bottom, then left to right.
    `bbox` uses exclusive right/bottom edges, like `image_crop`; `center` is the box centre.
    """
    image = load_image(path)
    if image.width * image.height > max_pixels:
        raise ToolError(f"image too large for shape detection (more than {max_pixels} pixels)")
    rgb = _rgb(image)
    bg = _background(rgb)
    names = list(PALETTE)
    colors = np.array([PALETTE[n] for n in names] + [bg], dtype=np.int32)
    labels = _nearest(rgb, colors)
    labels[labels == len(names)] = -1  # background
    # A palette colour that is the background cannot be told apart from it.
    for i, c in enumerate(colors[:-1]):
        if np.abs(c - np.array(bg)).sum() < 30:
            labels[labels == i] = -1
    shapes = []
    for label, runs in _components(labels.astype(np.int16)):
        area = sum(e - s for _, s, e in runs)
        if area < MIN_SHAPE_AREA:
            continue
        top = min(y for y, _, _ in runs)
        bottom = max(y for y, _, _ in runs) + 1
        left = min(s for _, s, _ in runs)
        right = max(e for _, _, e in runs)
        mask = np.zeros((bottom - top, right - left), dtype=bool)
        for y, s, e in runs:
            mask[y - top, s - left : e - left] = True
        shapes.append(
            {
                "kind": _classify(mask),
                "color": names[label],
                "center": [int((left + right) // 2), int((top + bottom) // 2)],
                "bbox": [left, top, right, bottom],
                "area": area,
            }
        )
    shapes.sort(key=lambda s: (s["center"][1], s["center"][0]))
    background = min(NAMED_COLORS, key=lambda n: sum((a - b) ** 2 for a, b in
                                                   zip(NAMED_COLORS[n], bg, strict=True)))  # fmt: skip
    return {"count": len(shapes), "background": background, "shapes": shapes}


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def resolve_in_root(root: Path, relative: str, *, must_exist: bool = True) -> Path:
    """`relative` inside `root`, or ToolError: absolute paths, `..` and symlinks out are refused."""
    if not isinstance(relative, str) or not relative.strip():
        raise ToolError("path must be a non-empty relative path such as 'images/cat.png'")
    if "\0" in relative:
        raise ToolError("path contains a NUL byte")
    candidate = Path(relative)
    if candidate.is_absolute() or relative.startswith(("~", "\\")):
        raise ToolError(f"refused: {relative!r} is absolute; paths are relative to the sandbox")
    root = root.resolve()
    target = (root / candidate).resolve()
    if not target.is_relative_to(root):
        raise ToolError(f"refused: {relative!r} points outside the sandbox")
    if must_exist and not target.exists():
        raise ToolError(f"{relative} does not exist")
    return target


def make_image_tools(
    root: str | Path, overlay: str | Path | None = None, *, max_pixels: int = MAX_PIXELS
) -> list[ToolDefinition]:
    """`[image_info, image_crop, image_histogram, image_dominant_colors, detect_shapes]` on `root`.

    With an `overlay` directory (one per episode, like the file tools'), `image_crop` saves
    there and every read looks in the overlay first, then in `root`: an episode sees its own
    crops, parallel episodes never see each other's, and the shared world is never written.
    The overlay is created on the first save."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} is not a directory")
    over = Path(overlay).resolve() if overlay is not None else None

    def locate(path: str) -> Path:
        """Where a read of `path` comes from: the overlay when it holds the file, else root."""
        if over is not None and over.is_dir():
            candidate = resolve_in_root(over, path, must_exist=False)
            if candidate.exists():
                return candidate
        return resolve_in_root(root, path)

    def open_rel(path: str) -> tuple[Path, Image.Image]:
        full = locate(path)
        return full, load_image(full, max_pixels)

    @tool
    def image_info(path: str) -> dict:
        """Size, format and colour mode of an image.

        Args:
            path: Image path relative to the sandbox, e.g. 'images/shapes_1.png'.
        """
        full, image = open_rel(path)
        return {
            "path": path,
            "format": image.format,
            "width": image.width,
            "height": image.height,
            "mode": image.mode,
            "size_bytes": full.stat().st_size,
        }

    @tool
    def image_crop(path: str, left: int, top: int, right: int, bottom: int, save_as: str) -> dict:
        """Crop a rectangle out of an image and save it as a new image file.

        Args:
            path: Image path relative to the sandbox.
            left: Left edge in pixels (included).
            top: Top edge in pixels (included).
            right: Right edge in pixels (excluded).
            bottom: Bottom edge in pixels (excluded).
            save_as: Where to save the crop, relative to the sandbox; the extension (.png, .jpg, ...) sets the format.
        """
        _, image = open_rel(path)
        if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
            raise ToolError(
                f"crop box ({left}, {top}, {right}, {bottom}) must satisfy 0 <= left < right <= "
                f"{image.width} and 0 <= top < bottom <= {image.height}"
            )
        target = resolve_in_root(over or root, save_as, must_exist=False)
        fmt = SAVE_FORMATS.get(target.suffix.lower())
        if fmt is None:
            raise ToolError(f"save_as must end in one of {', '.join(SAVE_FORMATS)}")
        if target.is_dir():
            raise ToolError(f"{save_as} is a directory")
        crop = image.crop((left, top, right, bottom))
        if fmt == "JPEG" and crop.mode not in ("RGB", "L"):
            crop = crop.convert("RGB")
        target.parent.mkdir(parents=True, exist_ok=True)
        crop.save(target, format=fmt)
        return {"saved": save_as, "width": crop.width, "height": crop.height}

    @tool
    def image_histogram(path: str, bins: int = 8) -> dict:
        """Pixel counts per brightness range for the red, green and blue channels.

        Args:
            path: Image path relative to the sandbox.
            bins: Number of equal ranges over 0-255 (1 to 256).
        """
        if not 1 <= bins <= 256:
            raise ToolError("bins must be between 1 and 256")
        _, image = open_rel(path)
        rgb = _rgb(image).reshape(-1, 3).astype(np.int32)
        edges = [round(i * 256 / bins) for i in range(bins + 1)]
        result: dict[str, Any] = {"bins": bins, "pixels": int(rgb.shape[0]), "edges": edges}
        for channel, name in enumerate(("red", "green", "blue")):
            index = rgb[:, channel] * bins // 256
            result[name] = np.bincount(index, minlength=bins).tolist()
        return result

    @tool
    def image_dominant_colors(path: str, k: int = 3) -> dict:
        """The k most common colours, named from a fixed palette, with the fraction of pixels.

        Args:
            path: Image path relative to the sandbox.
            k: How many colours to return (1 to 9).
        """
        if not 1 <= k <= len(NAMED_COLORS):
            raise ToolError(f"k must be between 1 and {len(NAMED_COLORS)}")
        _, image = open_rel(path)
        if image.width * image.height > 512 * 512:
            image = image.copy()
            image.thumbnail((512, 512), Image.Resampling.NEAREST)
        rgb = _rgb(image).reshape(-1, 3)
        names = list(NAMED_COLORS)
        palette = np.array([NAMED_COLORS[n] for n in names], dtype=np.int32)
        counts = np.bincount(_nearest(rgb, palette), minlength=len(names))
        order = np.argsort(-counts, kind="stable")[:k]
        total = int(counts.sum())
        return {
            "colors": [
                {"color": names[i], "fraction": round(int(counts[i]) / total, 4)}
                for i in order
                if counts[i] > 0
            ]
        }

    @tool(name="detect_shapes")
    def detect_shapes_tool(
        path: str, color: ShapeColor | None = None, kind: ShapeKind | None = None
    ) -> dict:
        """Find the coloured circles, squares and triangles in an image, optionally only those
        of one colour or kind; "count" is how many were found.

        Returns each shape's kind, colour, centre [x, y], bounding box [left, top, right, bottom]
        and area in pixels, ordered top to bottom, then left to right.

        Args:
            path: Image path relative to the sandbox.
            color: Only shapes of this colour.
            kind: Only shapes of this kind.
        """
        full = locate(path)
        load_image(full, max_pixels)  # the same checks as the other tools
        found = detect_shapes(full)
        shapes = [
            s for s in found["shapes"] if color in (None, s["color"]) and kind in (None, s["kind"])
        ]
        return {**found, "count": len(shapes), "shapes": shapes}

    return [image_info, image_crop, image_histogram, image_dominant_colors, detect_shapes_tool]
