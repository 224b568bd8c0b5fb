"""A disk that fills up at start-up (Hydra's saved configs) or while a checkpoint is saved
(torch's zip writer says ``unexpected pos``, not ENOSPC) is one line naming the file.

The full disk is real: a 1 MiB tmpfs (needs root; otherwise these tests are skipped, and
the mapping of torch's error is checked with that error alone)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from soup_exp.utils.config import SECRETS_ENV
from soup_exp.utils.io import WriteError, atomic_torch_save


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # torch may hold a deleted file


def _fill(directory: Path, leave: int = 0) -> None:
    free = shutil.disk_usage(directory).free
    (directory / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_at_start_up_is_one_line(small_disk, tmp_path) -> None:
    _fill(small_disk)
    env = {**os.environ, "SOUP_ROOT": str(tmp_path / "root"), "SOUP_CACHE_DIR": str(tmp_path / "cache")}
    env.pop(SECRETS_ENV, None)
    imagenet = tmp_path / "imagenet"
    (imagenet / "train").mkdir(parents=True)  # the root the start-up check looks for (the data stage's work)
    done = subprocess.run([sys.executable, "-m", "soup_exp.finetune", "experiment=smoke",
                           f"data.roots.ImageNet={imagenet}", f"paths.output_dir={small_disk}/out"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"soup-exp finetune: error: cannot write {small_disk}/out/smoke/hydra/finetune/")
    assert "/.hydra/config.yaml: No space left on device" in line and "free some space" in line


@pytest.mark.parametrize("spare", [64, 1 << 20])  # torch's writer runs out; the size check refuses it
def test_a_full_disk_while_saving_a_checkpoint_names_the_file(small_disk, spare) -> None:
    target = small_disk / "run" / "checkpoints" / "last.pt"
    target.parent.mkdir(parents=True)
    _fill(small_disk, leave=256 * 1024)
    free, rng = shutil.disk_usage(small_disk).free, torch.get_rng_state()
    weights = (free - spare - rng.numel()) // 4 if spare < free else free
    checkpoint = {"model": {"w": torch.zeros(weights)}, "step": 3, "rng": [{"torch": rng}]}
    with pytest.raises(WriteError, match=rf"^cannot write {target}: No space left on device \(.* needed, "
                                         rf".* free in {target.parent}\); free some space") as caught:
        atomic_torch_save(checkpoint, target)
    assert type(caught.value.__cause__) is (RuntimeError if spare < free else OSError)
    assert sorted(p.name for p in target.parent.iterdir()) == []  # no temp file left


def test_torchs_failed_write_is_the_disk_full_error(tmp_path, monkeypatch) -> None:
    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 726")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path}/last.pt: No space left on device"):
        atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(RuntimeError("another failure")))
    with pytest.raises(RuntimeError, match="another failure"):
        atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "last.pt")
