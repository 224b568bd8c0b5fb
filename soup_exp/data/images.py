"""The one image reader: every loader, the checker and the evaluator decode through it,
so a border crop or a colour-mode conversion can never differ between code paths."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from soup_exp.errors import SoupExpError


class UnreadableImageError(SoupExpError, OSError):
    """An image file that PIL cannot decode (truncated, corrupt or not an image)."""


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header (nothing decoded); None if unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def load_image(path: str | os.PathLike, border_crop: int = 0) -> Image.Image:
    """Decode ``path`` fully as RGB, cutting ``border_crop`` pixels off every side.

    ObjectNet images carry a 2-pixel border that the reference evaluation removes before
    preprocessing; every other dataset uses ``border_crop=0``.
    """
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot decode image {os.fspath(path)}: {err}") from err
    if border_crop:
        width, height = rgb.size
        if width <= 2 * border_crop or height <= 2 * border_crop:
            raise UnreadableImageError(
                f"image {os.fspath(path)} ({width}x{height}) is too small for a "
                f"{border_crop}-pixel border crop"
            )
        rgb = rgb.crop((border_crop, border_crop, width - border_crop, height - border_crop))
    return rgb
