from __future__ import annotations

import pytest
import torch

from soup_exp.artifacts import ArtifactError
from soup_exp.soups import greedy_soup, uniform_soup
from soup_exp.soups.ingredients import (
    EmptyIngredientsError,
    IngredientMismatchError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
)


def test_mismatched_keys_named(tmp_path, make_sd, make_run):
    a, b = make_sd(0), make_sd(1)
    b["extra.weight"] = b.pop("head.bias")
    make_run(tmp_path, "a", a)
    make_run(tmp_path, "b", b)
    with pytest.raises(IngredientMismatchError, match=r"b/model.safetensors.*'head.bias'.*'extra.weight'"):
        uniform_soup(tmp_path)


def test_mismatched_shapes_named(tmp_path, make_sd, make_run):
    a, b = make_sd(0), make_sd(1)
    b["head.weight"] = torch.zeros(6, 3)
    make_run(tmp_path, "a", a)
    make_run(tmp_path, "b", b)
    with pytest.raises(IngredientMismatchError, match=r"b/model.safetensors.*'head.weight': float32\[6, 3\]"):
        uniform_soup(tmp_path)


def test_mismatched_dtypes(make_sd):
    a, b = make_sd(0), make_sd(1, torch.float16)
    with pytest.raises(IngredientMismatchError, match="float16"):
        uniform_soup([a, b])


def test_mismatched_base_models(tmp_path, make_sd, make_run):
    make_run(tmp_path, "a", make_sd(0), base_model="open_clip:ViT-B-32:openai")
    make_run(tmp_path, "b", make_sd(1), base_model="open_clip:ViT-B-16:openai")
    with pytest.raises(IngredientMismatchError, match=r"b/model.safetensors: base_model .*ViT-B-16"):
        uniform_soup(tmp_path)


def test_nan_weights(tmp_path, make_sd, make_run):
    bad = make_sd(1)
    bad["head.weight"][0, 0] = float("nan")
    make_run(tmp_path, "a", make_sd(0))
    make_run(tmp_path, "b", bad)
    with pytest.raises(NonFiniteWeightsError, match=r"b/model.safetensors: tensor 'head.weight'"):
        uniform_soup(tmp_path)
    with pytest.raises(NonFiniteWeightsError):
        greedy_soup(tmp_path, [0.9, 0.8], lambda sd: 1.0)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickled_files_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even opened")
    with pytest.raises(UnsafeCheckpointError, match="pickled"):
        uniform_soup([path])


def test_pickled_run_dir_refused(tmp_path, make_sd, make_run):
    run = make_run(tmp_path, "a", make_sd(0))
    (run / "model.safetensors").unlink()
    (run / "model.pt").write_bytes(b"x")
    with pytest.raises(UnsafeCheckpointError, match="model.pt"):
        uniform_soup(run)


def test_run_without_weights_named_as_damaged(tmp_path, make_sd, make_run):
    run = make_run(tmp_path, "a", make_sd(0))
    (run / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"a/ingredient.json exists but .*a/model.safetensors does not"):
        uniform_soup(run)


def test_two_ingredients_of_one_name_both_named(tmp_path, make_sd, make_run):
    make_run(tmp_path / "x", "same", make_sd(0))
    make_run(tmp_path / "y", "same", make_sd(1))
    with pytest.raises(ArtifactError, match=r"two ingredients are named 'same': .*x/same.* and .*y/same.*rename one"):
        uniform_soup(tmp_path)


def test_empty_lists(tmp_path):
    with pytest.raises(EmptyIngredientsError, match="no ingredients"):
        uniform_soup([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyIngredientsError, match="empty"):
        uniform_soup(tmp_path / "empty")
    with pytest.raises(EmptyIngredientsError):
        greedy_soup([], [], lambda sd: 0.0)
    with pytest.raises(EmptyIngredientsError):
        uniform_soup(str(tmp_path / "nothing*"))


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        uniform_soup(["/does-not-exist/model.safetensors"])


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_values_found(make_sd, bad, dtype):
    a, b = make_sd(0, dtype), make_sd(1, dtype)
    b["image_encoder.ln.weight"][-1] = bad
    with pytest.raises(NonFiniteWeightsError, match="state_dict_1.*'image_encoder.ln.weight'"):
        uniform_soup([a, b])
