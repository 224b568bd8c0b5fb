"""Files soup-exp writes: temp-file cleanup removes only its own temp files, and identical
runs write byte-identical safetensors (their metadata sorted)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from soup_exp.utils import io
from soup_exp.utils.config import SECRETS_ENV
from soup_exp.utils.io import atomic_save_safetensors, make_temp, remove_stale_temp_files


def test_temp_file_cleanup_removes_only_soup_exps_own_temp_files(tmp_path):
    users = [tmp_path / n for n in ("notes.tmp", ".draft.tmp", ".tmpuserfile", "data.json.tmp", ".a.b.tmp",
                                    ".model.safetensors.12@node.tmp", ".x.notapid@node.abc.tmp")]
    dead = tmp_path / f".soup.json.{2**22 + 12345}@{io._HOST}.k1ll3d.tmp"
    old_elsewhere = tmp_path / ".soup.json.12345@some-other-node.o1d000.tmp"
    for path in (*users, dead, old_elsewhere):
        path.write_bytes(b"x")
        an_hour_ago = time.time() - 3600
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([dead, old_elsewhere])
    assert all(p.exists() for p in users)
    assert io._TEMP_NAME.match(make_temp(tmp_path / "ingredient.json").name)


SAVE = """
import sys, torch
from soup_exp.utils.io import atomic_save_safetensors
torch.manual_seed(0)
tensors = {f"layer{i}.weight": torch.randn(3, 4) for i in range(6)}
metadata = {key: f"value of {key}" for key in ("model", "format", "base_model", "recipe", "members", "zeta", "alpha")}
atomic_save_safetensors(tensors, sys.argv[1], metadata=metadata)
"""


def _header(path) -> dict:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length])


def test_identical_saves_in_two_processes_write_identical_bytes(tmp_path):
    """Without sorting, safetensors' hash-ordered metadata differs between processes."""
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", SAVE, str(tmp_path / f"{name}.safetensors")], check=True, timeout=120)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert a.read_bytes() == b.read_bytes()
    metadata = _header(a)["__metadata__"]
    assert list(metadata) == sorted(metadata) and metadata["zeta"] == "value of zeta"
    assert set(load_file(a)) == {f"layer{i}.weight" for i in range(6)}


def test_a_header_that_grows_is_rewritten_whole(tmp_path):
    """The rare header whose sorted form is longer (here: one without metadata) moves the data."""
    path = tmp_path / "w.safetensors"
    tensors = {"b": torch.arange(6.0), "a": torch.ones(2, 2)}
    atomic_save_safetensors(tensors, path)
    io.sort_safetensors_metadata(path)
    assert _header(path)["__metadata__"] == {} and (8 + struct.unpack("<Q", path.read_bytes()[:8])[0]) % 8 == 0
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items()) and list(path.parent.iterdir()) == [path]


@pytest.mark.slow
def test_two_smoke_runs_write_byte_identical_safetensors(tmp_path):
    """The acceptance check: the smoke pipeline run twice (same output path, shared cache)."""
    env = {**os.environ, "SOUP_ROOT": str(tmp_path / "root"), "SOUP_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    for key in ("SOUP_OUTPUT_DIR", SECRETS_ENV):
        env.pop(key, None)
    from soup_exp.artifacts.correctness import read_hits

    runs, hits = [], []
    for run in ("first", "second"):
        done = subprocess.run([sys.executable, "-m", "soup_exp.pipeline", "experiment=smoke"], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        (tmp_path / "root" / "outputs").rename(tmp_path / run)
        runs.append({p.relative_to(tmp_path / run): p.read_bytes() for p in (tmp_path / run).rglob("*.safetensors")
                     if ".cache" not in p.parts and p.name != "results.correct.safetensors"})  # cached logits are named after their weights' mtime
        hits.append({(m, d): h.bits.tobytes() for m, per in read_hits(
            tmp_path / run / "smoke" / "results.correct.safetensors").items() for d, h in per.items()})
    assert {p.parts[1] for p in runs[0]} == {"zeroshot", "ingredients", "soups"} and runs[0].keys() == runs[1].keys()
    assert [str(p) for p in runs[0] if runs[0][p] != runs[1][p]] == []
    assert hits[0] and hits[0] == hits[1]  # the same per-image hits (their metadata names each run's file stamps)
