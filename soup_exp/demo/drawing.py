"""Procedural images for the miniature ImageNet family: one look per class, one style per split.

A class is a shape, a hue and a texture, redundantly, so a tiny ViT learns it in seconds
at 32 px. Styles remove or corrupt different cues, as real shifts do: ``sketch`` keeps
only edges (no colour), ``rendition`` posterises and shifts colours, ``adversarial``
occludes and adds noise, ``objectnet`` rotates freely, shrinks the object and clutters
the scene, ``v2`` is in-distribution with a small photometric drift. ImageNet's own
photos (``photo``, ``v2``) mostly show a class in its usual setting (a background tinted
with the class's context hue), as real ImageNet photos do; the pretraining's ``web``
photos and every shift show objects anywhere. Fine-tuning on ImageNet learns that
context, which helps in distribution and not under the shifts: the paper's
accuracy-robustness trade-off. Every draw comes from the ``numpy`` generator passed in,
so a seed fixes every pixel.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

SUPERSAMPLE = 2
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "bar")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots", "diagonal")
GREYSCALE_FRACTION = 0.25
CONTEXT_SHARE = 0.7  # ImageNet photos showing the class in its usual setting
STYLES = ("photo", "v2", "web", "sketch", "rendition", "adversarial", "objectnet")


def class_look(k: int) -> dict:
    """Shape, hue and texture of the k-th class.

    (shape, texture) is distinct for the first 24 classes, so every class can be told
    apart without colour (sketches, greyscale photos). Hues follow the golden ratio: the
    closest hues (k and k + 21, k + 13) belong to other shapes, and k + 8 shares the shape
    but not the texture. Classes therefore differ by conjunctions of cues, as real ones do.
    """
    shape = k % len(SHAPES)
    return {"shape": SHAPES[shape],
            "hue": (k * 0.381966 + 0.05) % 1.0,
            "texture": TEXTURES[(shape + 2 * (k // len(SHAPES))) % len(TEXTURES)],
            "context": (k * 0.754878 + 0.62) % 1.0}


def _polygon(center, radius, rotation, points) -> list[tuple[float, float]]:
    cx, cy = center
    return [(cx + radius * r * math.cos(rotation + a), cy + radius * r * math.sin(rotation + a))
            for a, r in points]


def _regular(n: int, offset: float = 0.0) -> list[tuple[float, float]]:
    return [(2 * math.pi * i / n + offset, 1.0) for i in range(n)]


def _star() -> list[tuple[float, float]]:
    return [(math.pi * i / 5 - math.pi / 2, 1.0 if i % 2 == 0 else 0.42) for i in range(10)]


def _cross() -> list[tuple[float, float]]:
    w = 0.33
    corners = [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1),
               (w, -w), (1, -w), (1, w), (w, w)]
    return [(math.atan2(y, x), math.hypot(x, y)) for x, y in corners]


def _rect(half_w: float, half_h: float) -> list[tuple[float, float]]:
    corners = [(half_w, half_h), (-half_w, half_h), (-half_w, -half_h), (half_w, -half_h)]
    return [(math.atan2(y, x), math.hypot(x, y)) for x, y in corners]


POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3, -math.pi / 2),
    "star": _star(),
    "cross": _cross(),
    "diamond": [(0, 0.75), (math.pi / 2, 1.1), (math.pi, 0.75), (3 * math.pi / 2, 1.1)],
    "bar": _rect(1.0, 0.32),
}


def shape_mask(size: int, shape: str, center, radius: float, rotation: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = center
    if shape in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        if shape == "ring":
            r = radius * 0.55
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=0)
    else:
        draw.polygon(_polygon(center, radius, rotation, POLYGONS[shape]), fill=255)
    return mask


def texture_pattern(size: int, texture: str, period: float, rotation: float) -> np.ndarray:
    """A (size, size) array in [0, 1]: where the texture darkens the object's colour."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = math.cos(rotation), math.sin(rotation)
    u, v = c * x + s * y, -s * x + c * y
    phase = lambda t: (np.floor(t / period) % 2).astype(np.float32)  # noqa: E731
    patterns: dict[str, Callable[[], np.ndarray]] = {
        "solid": lambda: np.zeros((size, size), np.float32),
        "hstripes": lambda: phase(v),
        "vstripes": lambda: phase(u),
        "checker": lambda: (phase(u) + phase(v)) % 2,
        "dots": lambda: ((np.mod(u, 2 * period) - period) ** 2 + (np.mod(v, 2 * period) - period) ** 2
                         < (0.55 * period) ** 2).astype(np.float32),
        "diagonal": lambda: phase((u + v) / math.sqrt(2)),
    }
    return patterns[texture]()


def hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32) * 255


def _background(rng: np.random.Generator, size: int, *, flat: bool = False, clutter: bool = False,
                context: float | None = None) -> np.ndarray:
    """A two-colour gradient: greyish and random, or tinted with a ``context`` hue."""
    if context is None:
        a = hsv_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.9))
    else:
        a = hsv_rgb(context + rng.uniform(-0.02, 0.02), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.85))
    if flat:
        return np.broadcast_to(a, (size, size, 3)).copy()
    if context is None:
        b = hsv_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.9))
    else:
        b = hsv_rgb(context + rng.uniform(-0.04, 0.04), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.85))
    t = np.linspace(0, 1, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(angle) * t[None, :] + math.sin(angle) * t[:, None])
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = a * (1 - ramp[..., None]) + b * ramp[..., None]
    if clutter:
        stripes = texture_pattern(size, "hstripes", rng.uniform(6, 14), rng.uniform(0, math.pi))
        img = img * (1 - 0.25 * stripes[..., None])
    return img


def _paste_object(canvas: np.ndarray, rng: np.random.Generator, look: dict, *, scale, rotation,
                  hue_jitter: float, texture_strength: float = 0.5) -> Image.Image:
    """Draw the class object into ``canvas`` (float RGB, in place); return its mask."""
    size = canvas.shape[0]
    radius = rng.uniform(*scale) * size
    margin = radius * 0.8
    center = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    mask = shape_mask(size, look["shape"], center, radius, rotation)
    colour = hsv_rgb(look["hue"] + rng.uniform(-hue_jitter, hue_jitter),
                     rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    pattern = texture_pattern(size, look["texture"], period=max(radius / 2.4, 4.0),
                              rotation=rotation)
    obj = colour * (1 - texture_strength * pattern[..., None])
    alpha = np.asarray(mask, np.float32)[..., None] / 255
    canvas *= 1 - alpha
    canvas += alpha * obj
    return mask


def _distractors(canvas: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Clutter that belongs to no class: thin lines and irregular blobs in random colours."""
    size = canvas.shape[0]
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        colour = tuple(int(c) for c in hsv_rgb(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.3, 1)))
        if rng.random() < 0.5:
            pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
            draw.line(pts, fill=colour, width=int(rng.integers(2, 6)) * SUPERSAMPLE)
        else:
            c = rng.uniform(0, size, 2)
            r = rng.uniform(0.06, 0.14) * size
            pts = [(c[0] + r * rng.uniform(0.4, 1.2) * math.cos(a), c[1] + r * rng.uniform(0.4, 1.2) * math.sin(a))
                   for a in np.linspace(0, 2 * math.pi, 7, endpoint=False)]
            draw.polygon(pts, fill=colour)
    canvas[...] = np.asarray(img, np.float32)


def _noise(canvas: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return canvas + rng.normal(0, sigma, canvas.shape).astype(np.float32)


def _to_image(canvas: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    return img.resize((size, size), Image.Resampling.BOX)


def render(look: dict, style: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One ``size`` x ``size`` image of the class ``look`` in ``style``."""
    big = size * SUPERSAMPLE
    small_rotation = rng.uniform(-0.35, 0.35)
    if style in ("photo", "v2", "web"):
        in_context = style != "web" and rng.random() < CONTEXT_SHARE
        canvas = _background(rng, big, context=look["context"] if in_context else None)
        _paste_object(canvas, rng, look, scale=(0.26, 0.38) if style == "v2" else (0.28, 0.42),
                      rotation=small_rotation, hue_jitter=0.06 if style == "v2" else 0.03)
        if style == "v2":
            canvas = canvas * rng.uniform(0.72, 0.9) + rng.uniform(-8, 8, 3).astype(np.float32)
        img = _to_image(_noise(canvas, rng, 9.0 if style == "v2" else 5.0), size)
        # Like real ImageNet's greyscale photos: shape and texture must carry the class too.
        return img.convert("L").convert("RGB") if rng.random() < GREYSCALE_FRACTION else img
    if style == "sketch":
        canvas = np.full((big, big, 3), 255.0, np.float32)
        _paste_object(canvas, rng, look, scale=(0.28, 0.42), rotation=small_rotation,
                      hue_jitter=0.03, texture_strength=0.8)
        grey = Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).convert("L")
        edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES), np.uint8).copy()
        edges[:2], edges[-2:], edges[:, :2], edges[:, -2:] = 0, 0, 0, 0  # filter's frame artefact
        edges = Image.fromarray(edges).filter(ImageFilter.MaxFilter(3))
        sketch = np.asarray(ImageOps.invert(ImageOps.autocontrast(edges)), np.float32)
        shading = 255 - (255 - np.asarray(grey, np.float32)) * rng.uniform(0.6, 0.9)
        pencil = np.minimum(sketch, shading) * rng.uniform(0.85, 1.0) + rng.normal(0, 6, (big, big))
        return Image.fromarray(pencil.clip(0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    if style == "rendition":
        canvas = _background(rng, big, flat=True)
        canvas = canvas * 0.5 + hsv_rgb(rng.random(), 0.9, 0.9) * 0.5
        tinted = dict(look, hue=look["hue"] + rng.choice([-1, 1]) * rng.uniform(0.02, 0.06))
        mask = _paste_object(canvas, rng, tinted, scale=(0.28, 0.44), rotation=small_rotation,
                             hue_jitter=0.0, texture_strength=0.7)
        outline = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(7)), mask)
        canvas *= 1 - np.asarray(outline, np.float32)[..., None] / 255
        img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
        return ImageOps.posterize(img, 2).resize((size, size), Image.Resampling.BOX)
    if style == "adversarial":
        canvas = _background(rng, big)
        mask = _paste_object(canvas, rng, look, scale=(0.26, 0.4), rotation=small_rotation, hue_jitter=0.08)
        x0, y0, x1, y1 = mask.getbbox() or (0, 0, big, big)
        for _ in range(int(rng.integers(1, 3))):
            w, h = (x1 - x0) * rng.uniform(0.35, 0.6), (y1 - y0) * rng.uniform(0.35, 0.6)
            ox, oy = rng.uniform(x0 - w / 3, x1 - w / 2), rng.uniform(y0 - h / 3, y1 - h / 2)
            canvas[int(max(oy, 0)):int(oy + h), int(max(ox, 0)):int(ox + w)] = hsv_rgb(
                rng.random(), rng.uniform(0, 0.8), rng.uniform(0.2, 0.9))
        canvas = canvas * rng.uniform(0.6, 1.0) + rng.uniform(-20, 20, 3).astype(np.float32)
        return _to_image(_noise(canvas, rng, 28.0), size)
    if style == "objectnet":
        canvas = _background(rng, big, clutter=True)
        _distractors(canvas, rng, int(rng.integers(2, 5)))
        _paste_object(canvas, rng, look, scale=(0.16, 0.28), rotation=rng.uniform(0, 2 * math.pi),
                      hue_jitter=0.08, texture_strength=0.35)
        _distractors(canvas, rng, int(rng.integers(1, 3)))
        canvas = canvas * rng.uniform(0.6, 0.9) + rng.uniform(0, 40)
        return _to_image(_noise(canvas, rng, 10.0), size)
    raise ValueError(f"unknown style {style!r}; known: {STYLES}")


def add_border(img: Image.Image, width: int, colour=(196, 32, 32)) -> Image.Image:
    """ObjectNet's images carry a thin frame that evaluation crops off; reproduce it."""
    return ImageOps.expand(img, border=width, fill=colour)
