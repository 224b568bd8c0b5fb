"""A moved or copied experiment resumes (issue 25 item 7): a fine-tune's identity names the
init it starts from by its weights' content, not by the absolute ``train.init_from`` path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from soup_exp.errors import OutputConflictError
from soup_exp.finetune import resolve_run, run_finetune
from soup_exp.training import ingredient as store
from soup_exp.utils.io import atomic_save_safetensors, atomic_write_json

WORKER = Path(__file__).parent / "_kill_worker.py"
MEMBER = ["sweep=demo", "sweep.index=0", "train.epochs=2", "train.ckpt_every_steps=2"]


def _experiment(root: Path) -> Path:
    return root / "outputs" / "t" / "ingredients"


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_moved_experiment_is_finished_and_a_copied_one_too(tiny_root: Path, compose_tiny, tmp_path_factory, caplog) -> None:
    run_finetune(compose_tiny(tiny_root, "sweep=lp_init"))
    member = run_finetune(compose_tiny(tiny_root, *MEMBER))
    identity = _record(member / "ingredient.json")["identity"]
    assert "weights_sha256" in identity["hparams"]["init_from"] and str(tiny_root) not in json.dumps(identity)

    moved = tmp_path_factory.mktemp("elsewhere") / "root"
    shutil.move(tiny_root, moved)
    copied = tmp_path_factory.mktemp("copied") / "root"
    shutil.copytree(moved, copied)  # new modification times: content, not mtime, identifies the init
    for root in (moved, copied):
        before = (_experiment(root) / "ft_000" / "ingredient.json").read_bytes()
        caplog.clear()
        caplog.set_level("INFO")
        assert run_finetune(compose_tiny(root, *MEMBER)) == _experiment(root) / "ft_000"
        assert "nothing to do" in caplog.text
        assert (_experiment(root) / "ft_000" / "ingredient.json").read_bytes() == before

    lp_weights = _experiment(copied) / "lp_init" / "model.safetensors"
    from safetensors.torch import load_file

    changed = {k: v + 1 for k, v in load_file(str(lp_weights)).items()}
    atomic_save_safetensors(changed, lp_weights)  # another LP init at the same path
    with pytest.raises(OutputConflictError, match=r"hparams\.init_from\.weights_sha256: there '[0-9a-f]+'"):
        run_finetune(compose_tiny(copied, *MEMBER))


def test_an_interrupted_run_resumes_after_the_experiment_moved(tiny_root: Path, compose_tiny, tmp_path_factory) -> None:
    run_finetune(compose_tiny(tiny_root, "sweep=lp_init"))
    env = {**os.environ, "KILL_AT_STEP": "3", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(WORKER), str(tiny_root), *MEMBER], env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (_experiment(tiny_root) / "ft_000" / "checkpoints" / "last.pt").is_file()

    moved = tmp_path_factory.mktemp("moved") / "root"
    shutil.move(tiny_root, moved)
    resumed = run_finetune(compose_tiny(moved, *MEMBER))
    assert resumed == _experiment(moved) / "ft_000"
    assert _record(resumed / "ingredient.json")["metrics"]["train"]["resumed_from_step"] == 2


def _as_written_before(run_dir: Path, cfg) -> None:
    """Rewrite ``ingredient.json`` as soup-exp did up to issue 25: ``train.init_from`` by path."""
    from soup_exp.finetune import path_identity

    spec = resolve_run(cfg)
    record = _record(run_dir / "ingredient.json")
    old = path_identity(spec.cfg, spec.settings, spec.draw, spec.classes)
    atomic_write_json(run_dir / "ingredient.json", {**record, "identity": old, "fingerprint": store.fingerprint(old)})


def test_records_that_name_the_init_by_path_are_still_this_runs(tiny_root: Path, compose_tiny, tmp_path_factory, caplog) -> None:
    run_finetune(compose_tiny(tiny_root, "sweep=lp_init"))
    member = run_finetune(compose_tiny(tiny_root, *MEMBER))
    _as_written_before(member, compose_tiny(tiny_root, *MEMBER))
    caplog.set_level("INFO")
    assert run_finetune(compose_tiny(tiny_root, *MEMBER)) == member  # in place
    assert "written by an older soup-exp" in caplog.text

    moved = tmp_path_factory.mktemp("moved") / "root"
    shutil.move(tiny_root, moved)
    assert run_finetune(compose_tiny(moved, *MEMBER)) == _experiment(moved) / "ft_000"  # moved: same init

    lp = _experiment(moved) / "lp_init" / "ingredient.json"
    atomic_write_json(lp, {**_record(lp), "held_out_accuracy": 0.01})  # not the init it was trained from
    with pytest.raises(OutputConflictError, match=r"hparams\.init_from: there '/"):
        run_finetune(compose_tiny(moved, *MEMBER))


def test_a_checkpoint_written_before_resumes_in_place(tiny_root: Path, compose_tiny) -> None:
    run_finetune(compose_tiny(tiny_root, "sweep=lp_init"))
    env = {**os.environ, "KILL_AT_STEP": "3", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(WORKER), str(tiny_root), *MEMBER], env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    spec = resolve_run(compose_tiny(tiny_root, *MEMBER))
    from soup_exp.finetune import path_identity

    old = path_identity(spec.cfg, spec.settings, spec.draw, spec.classes)
    assert spec.older_fingerprints == [store.fingerprint(old)] != [store.fingerprint(spec.identity)]
    atomic_write_json(spec.out_dir / "run.json", {"identity": old, "fingerprint": store.fingerprint(old)})
    checkpoint = spec.out_dir / "checkpoints" / "last.pt"
    torch.save({**torch.load(checkpoint, weights_only=True), "fingerprint": store.fingerprint(old)}, checkpoint)

    resumed = run_finetune(compose_tiny(tiny_root, *MEMBER))
    assert _record(resumed / "ingredient.json")["metrics"]["train"]["resumed_from_step"] == 2
    assert _record(resumed / "ingredient.json")["fingerprint"] == store.fingerprint(spec.identity)


def test_a_split_file_counts_by_its_content(tiny_root: Path, compose_tiny, tmp_path_factory) -> None:
    import numpy as np

    identities = []
    for folder in (tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")):
        np.save(folder / "split.npy", np.array([0, 1, 0, 1]))
        cfg = compose_tiny(tiny_root, f"data.heldout.index_file={folder / 'split.npy'}")
        identities.append(resolve_run(cfg).identity["heldout"])
    assert identities[0] == identities[1] and "sha256" in identities[0]["index_file"]
    np.save(folder / "split.npy", np.array([1, 1, 0, 1]))
    assert resolve_run(cfg).identity["heldout"] != identities[0]
