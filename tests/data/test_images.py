import numpy as np
import pytest
from PIL import Image

from soup_exp.data.images import UnreadableImageError, load_image


def test_converts_to_rgb_and_crops_border(tmp_path):
    path = tmp_path / "x.png"
    img = Image.new("L", (10, 8), 0)
    img.paste(255, (2, 2, 8, 6))  # white interior, black 2-px frame
    img.save(path)
    full = load_image(path)
    assert full.mode == "RGB" and full.size == (10, 8)
    cropped = load_image(path, border_crop=2)
    assert cropped.size == (6, 4)
    assert (np.asarray(cropped) == 255).all()


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "broken.JPEG"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.JPEG"):
        load_image(path)


def test_truncated_jpeg_is_unreadable(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnreadableImageError, match="cut.jpg"):
        load_image(path)


def test_border_crop_larger_than_image(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(UnreadableImageError, match="too small"):
        load_image(path, border_crop=2)
