"""Writes on shared storage: modes follow the umask, full disks and read-only folders are
one clear error naming the file, temp files of killed writers are cleaned up, and a torn
results line is skipped, then repaired."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from child_process import run_in_child, shared_dir, write_protect

from soup_exp.artifacts import write_run, write_weights
from soup_exp.artifacts.results import ResultsFormatError, ResultsStore, read_results
from soup_exp.utils import io
from soup_exp.utils.io import (
    WriteError,
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    make_temp,
    remove_stale_temp_files,
)

STATE = {"head.weight": torch.ones(3, 2), "head.bias": torch.zeros(3)}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_every_artefact_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_safetensors(STATE, tmp_path / "w.safetensors")
        ResultsStore(tmp_path / "results.jsonl").upsert({"name": "m", "kind": "finetune", "ImageNet": 0.5})
        write_run(tmp_path / "run", STATE, {"name": "run", "kind": "finetune"})
    finally:
        os.umask(old)
    files = [tmp_path / "a.json", tmp_path / "w.safetensors", tmp_path / "results.jsonl",
             tmp_path / "run" / "model.safetensors", tmp_path / "run" / "ingredient.json"]
    assert {f.name: oct(_mode(f)) for f in files} == {f.name: oct(0o666 & ~umask) for f in files}


def test_linking_a_write_protected_ingredient_needs_no_write_access():
    with shared_dir() as root:
        source = root / "ingredients" / "run0" / "model.safetensors"
        atomic_save_safetensors(STATE, source)
        write_protect(root / "ingredients")
        target = root / "soups" / "best" / "model.safetensors"
        target.parent.mkdir(parents=True)
        target.parent.chmod(0o777)
        status, err = run_in_child(lambda: write_weights(target, link_from=source), unprivileged=True)
        assert status == 0, err
        assert target.read_bytes() == source.read_bytes() and _mode(source) == 0o444


def test_a_full_disk_names_the_file_and_the_space(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50, 50))
    path = tmp_path / "soups" / "uniform" / "model.safetensors"
    with pytest.raises(WriteError, match=r"cannot write .*uniform/model.safetensors: No space left on device "
                                         r"\(68 B needed, 50 B free in .*\)") as caught:
        atomic_save_safetensors({"w": torch.zeros(17)}, path)
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_running_out_of_space_while_writing_is_named(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(WriteError, match=r"results.jsonl: No space left on device \(11 B needed, .* free"):
        atomic_write_text(tmp_path / "results.jsonl", "x" * 11)
    assert list(tmp_path.iterdir()) == []  # the temp file went with the failed write


def test_safetensors_io_errors_become_write_errors(tmp_path, monkeypatch):
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_text("partial")
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(WriteError, match=r"w.safetensors: No space left on device \(24 B needed"):
        atomic_save_safetensors({"w": torch.zeros(6)}, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_names_the_file():
    with shared_dir() as root:
        (root / "ro").mkdir()
        (root / "ro").chmod(0o555)
        status, err = run_in_child(lambda: atomic_write_json(root / "ro" / "exp" / "soup.json", {}), unprivileged=True)
    assert status == 1
    assert f"WriteError: cannot write {root}/ro/exp/soup.json: Permission denied ({root}/ro is not writable" in err


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_go_live_ones_stay(tmp_path):
    host = io._HOST
    soup = tmp_path / "soups" / "uniform"
    soup.mkdir(parents=True)
    killed = soup / f".model.safetensors.{_dead_pid()}@{host}.k1ll3d.tmp"
    running = soup / f".model.safetensors.{os.getppid()}@{host}.l1ve00.tmp"
    elsewhere = soup / ".soup.json.12345@some-other-node.a1b2c3.tmp"
    old_elsewhere = soup / ".soup.json.12345@some-other-node.o1d000.tmp"
    legacy, old_legacy = tmp_path / "soups" / ".tmpab12cd", tmp_path / "soups" / ".state.json.x9y8z7.tmp"
    mine = make_temp(soup / "soup.json")  # a live writer in this very process
    kept_file = soup / "model.safetensors"
    for path in (killed, running, elsewhere, old_elsewhere, legacy, old_legacy, kept_file):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    for path in (old_elsewhere, old_legacy):
        os.utime(path, (an_hour_ago, an_hour_ago))
    removed = remove_stale_temp_files(tmp_path / "soups")
    assert sorted(removed) == sorted([killed, old_elsewhere])  # other names are not soup-exp's (tests/test_file_writes.py)
    assert all(p.exists() for p in (running, elsewhere, legacy, old_legacy, mine, kept_file))
    assert mine.name.startswith(f".soup.json.{os.getpid()}@{host}.")
    assert remove_stale_temp_files(tmp_path / "nothing-here") == []


def test_the_report_skips_a_torn_last_line_and_a_write_repairs_it(tmp_path):
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    store.upsert({"name": "a", "kind": "finetune", "ImageNet": 0.5})
    path.write_bytes(path.read_bytes() + '{"name": "b", "ImageNet": 0.6, "label": "caf\u00e9'.encode()[:-1])
    with pytest.warns(UserWarning, match=r"results.jsonl, line 2: an incomplete last line"):
        assert [r["name"] for r in read_results(path)] == ["a"]
    with pytest.warns(UserWarning, match="line 2"):
        store.upsert({"name": "c", "kind": "soup", "ImageNet": 0.7})
    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == ["a", "c"]
    path.write_text(path.read_text() + "{torn\n" + path.read_text())
    with pytest.raises(ResultsFormatError, match="line 3: not valid JSON"):  # complete but broken: no guessing
        read_results(path)
