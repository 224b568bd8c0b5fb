from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from soup_exp.soups import uniform_soup


def _mean(sds):
    return {k: torch.stack([sd[k].double() for sd in sds]).mean(0) for k in sds[0]}


def _assert_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=0)


def test_uniform_state_dicts(make_sd):
    sds = [make_sd(i) for i in range(5)]
    _assert_close(uniform_soup(sds), _mean(sds))


def test_uniform_files_and_run_dirs(tmp_path, make_sd, make_run):
    sds = [make_sd(i) for i in range(4)]
    files = []
    for i, sd in enumerate(sds):
        files.append(tmp_path / "files" / f"m{i}.safetensors")
        files[-1].parent.mkdir(exist_ok=True)
        save_file(sd, str(files[-1]))
        make_run(tmp_path / "sweep", f"job_{i}", sd, held_out_accuracy=0.5)
    expected = _mean(sds)
    _assert_close(uniform_soup(files), expected)
    _assert_close(uniform_soup(str(tmp_path / "files" / "*.safetensors")), expected)
    _assert_close(uniform_soup(tmp_path / "sweep"), expected)
    _assert_close(uniform_soup(sorted((tmp_path / "sweep").iterdir())), expected)


def test_uniform_single_ingredient_is_itself(make_sd):
    sd = make_sd(3)
    out = uniform_soup([sd])
    for k in sd:
        assert torch.equal(out[k], sd[k])


def test_weighted_and_dtype_kept(make_sd):
    sds = [make_sd(i, torch.bfloat16) for i in range(3)]
    out = uniform_soup(sds, weights=[1, 2, 1])
    for k in sds[0]:
        assert out[k].dtype == torch.bfloat16
        ref = (sds[0][k].float() + 2 * sds[1][k].float() + sds[2][k].float()) / 4
        torch.testing.assert_close(out[k].float(), ref.bfloat16().float())


def test_unfinished_and_zeroshot_runs_skipped(tmp_path, caplog, make_sd, make_run):
    sds = [make_sd(i) for i in range(3)]
    make_run(tmp_path, "a", sds[0])
    make_run(tmp_path, "b", sds[1])
    make_run(tmp_path, "zs", sds[2], kind="zeroshot")
    (tmp_path / "unfinished").mkdir()
    save_file(sds[2], str(tmp_path / "unfinished" / "model.safetensors"))
    with caplog.at_level("INFO"):
        out = uniform_soup(tmp_path)
    _assert_close(out, _mean(sds[:2]))
    assert "unfinished" in caplog.text and "zeroshot" in caplog.text


def test_prefetch_off_matches(make_sd):
    sds = [make_sd(i) for i in range(3)]
    a, b = uniform_soup(sds, prefetch=True), uniform_soup(sds, prefetch=False)
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulate_dtype(dtype, make_sd):
    sds = [make_sd(i) for i in range(3)]
    _assert_close(uniform_soup(sds, accumulate_dtype=dtype, arithmetic="sum"), _mean(sds))
