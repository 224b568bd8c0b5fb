"""RandAugment must run over the paper's whole magnitude range (M 1..20) on current Pillow."""

import numpy as np
import pytest
from PIL import Image

from soup_exp.training.augment import _posterize, with_randaugment


@pytest.mark.parametrize("aug", ["rand-m1-n2", "rand-m2-n2", "rand-m20-n2"])
def test_randaugment_runs_at_every_paper_magnitude(aug):
    from torchvision import transforms as T

    transform = with_randaugment(T.Compose([T.Resize(32), T.ToTensor()]), aug)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for _ in range(100):
        assert transform(image).shape == (3, 32, 32)


def test_posterize_to_zero_bits_gives_black_like_old_pillow():
    image = Image.new("RGB", (4, 4), (200, 100, 50))
    assert np.asarray(_posterize(image, 0)).max() == 0
    assert np.asarray(_posterize(image, 8)).tolist() == np.asarray(image).tolist()


def test_timm_is_left_untouched_outside_our_transforms():
    from timm.data import auto_augment

    before = dict(auto_augment.NAME_TO_OP)
    from torchvision import transforms as T

    with_randaugment(T.Compose([T.Resize(32), T.ToTensor()]), "rand-m9-n2")
    assert before == auto_augment.NAME_TO_OP
    assert auto_augment.NAME_TO_OP["Posterize"] is not _posterize
