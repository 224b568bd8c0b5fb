"""Offline W&B runs written by the real wandb library, read back by the package's reader and
shown by `soup-exp runs` (listing, one run in full, JSON, errors naming the file)."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf

from soup_exp.cli import main as cli_main
from soup_exp.tracking.offline_runs import WandbFileError, read_offline_run, run_dirs
from soup_exp.tracking.wandb_run import start_run


def _cfg(out, stage):
    return OmegaConf.create({
        "name": "exp", "stage": stage, "out_dir": str(out),
        "train": {"mode": "finetune", "lr": 3e-5, "epochs": 2, "batch_size": 8},
        "sweep": {"name": "ft_001"}, "recipes": {"uniform": {}, "greedy": {"tolerance": 0.0}},
        "logger": {"mode": "offline", "project": "soup-test", "group": "exp", "tags": [], "dir": str(out)},
    })


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """``<out>/wandb`` with a fine-tune (5 steps), a soup (a table) and a failed evaluation."""
    out = tmp_path_factory.mktemp("paths") / "exp"
    with start_run(_cfg(out, "finetune"), "finetune", "ft_001") as run:
        for step in range(5):
            run.log({"train/loss": 1.0 / (step + 1), "train/lr": 3e-5}, step=step)
        run.summary({"held_out_accuracy": 0.8125})
    with start_run(_cfg(out, "soup"), "soup", "exp-soup") as run:
        run.log_table("greedy/history", ["candidate", "accuracy"], [["ft_001", 0.5]])
        run.summary({"greedy/held_out_accuracy": 0.83})
    evaluation = start_run(_cfg(out, "evaluate"), "evaluate", "exp-evaluate")
    evaluation.log({"ft_001/ImageNet": 0.7})
    evaluation.finish(exit_code=1)
    ids = {}
    for folder in run_dirs(out / "wandb"):
        logged = read_offline_run(folder)  # waits for wandb-core's last flush
        ids[logged.stage] = logged.run_id
    return out, ids


def _runs(capsys, *args):
    with pytest.raises(SystemExit) as stopped:
        cli_main(["runs", *args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return stopped.value.code or 0, out, err


def test_the_reader_gives_each_runs_stage_state_config_summary_and_history(experiment):
    out, ids = experiment
    runs = {r.stage: r for r in map(read_offline_run, run_dirs(out / "wandb"))}
    assert set(runs) == {"finetune", "soup", "evaluate"}
    ft = runs["finetune"]
    assert (ft.name, ft.state, ft.exit_code, ft.group) == ("ft_001", "finished", 0, "exp")
    assert ft.start_time and ft.config["train"]["lr"] == pytest.approx(3e-5)
    assert ft.metric("train/loss") == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert ft.last_values() == pytest.approx({"train/loss": 0.2, "train/lr": 3e-5})
    assert ft.summary["held_out_accuracy"] == 0.8125
    table = runs["soup"].summary["greedy/history"]  # wandb-core writes media field by field
    assert table["_type"] == "table-file" and table["nrows"] == 1
    assert runs["evaluate"].state == "failed (exit 1)"


def test_a_run_cut_off_before_its_exit_record_reads_as_unfinished(experiment, tmp_path):
    out, ids = experiment
    (folder,) = [d for d in run_dirs(out / "wandb") if d.name.endswith(ids["finetune"])]
    copy = shutil.copytree(folder, tmp_path / folder.name)
    file = next(copy.glob("run-*.wandb"))
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    logged = read_offline_run(copy, timeout=0)
    assert logged.state == "unfinished" and logged.run_id == ids["finetune"]


def test_runs_lists_every_stage_with_config_summary_and_history(experiment, capsys):
    out, ids = experiment
    code, text, err = _runs(capsys, str(out))
    assert code == 0, err
    assert text.splitlines()[0] == f"W&B runs in {out / 'wandb'}: 3 (soup-exp runs <id> shows one in full; --json for JSON)"
    blocks = {block.split()[0]: block for block in text.split("\n\n")[1:]}
    assert set(blocks) == {"finetune", "soup", "evaluate"}
    finetune = blocks["finetune"]
    assert "ft_001  [finished]" in finetune and f"id {ids['finetune']}  5 steps" in finetune
    assert "config   sweep.name=ft_001  train.mode=finetune  train.lr=3e-05  train.epochs=2  train.batch_size=8" \
        in finetune
    assert "  summary  held_out_accuracy=0.8125\n" in finetune  # the last losses are history's
    assert "  history  train/loss=0.2 (5)  train/lr=3e-05 (5)" in finetune
    assert "config   recipes=[uniform,greedy]" in blocks["soup"] and "greedy/history=<table-file>" in blocks["soup"]
    assert "[failed (exit 1)]" in blocks["evaluate"]


def test_runs_finds_the_experiment_from_its_overrides_and_shows_one_run_in_full(experiment, capsys):
    out, ids = experiment
    code, text, err = _runs(capsys, f"paths.output_dir={out.parent}", f"name={out.name}", ids["finetune"])
    assert code == 0, err
    assert text.startswith("finetune  ft_001  [finished]")
    assert "  train.lr = 3e-05" in text and "  logger.group = exp" in text
    assert "history: 5 rows" in text and "  train/loss: 5 values, first 1, last 0.2" in text


def test_runs_json_has_every_history_row(experiment, capsys):
    out, ids = experiment
    code, text, err = _runs(capsys, str(out / "wandb"), "--json")
    assert code == 0, err
    listed = {r["stage"]: r for r in json.loads(text)}
    assert [row["train/loss"] for row in listed["finetune"]["history"]] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert listed["soup"]["summary"]["greedy/held_out_accuracy"] == 0.83
    code, text, err = _runs(capsys, str(out), ids["soup"], "--json")
    one = json.loads(text)
    assert one["id"] == ids["soup"] and one["state"] == "finished" and one["steps"] == 1


def test_runs_errors_are_one_line_naming_the_directory_or_file(experiment, capsys, tmp_path):
    out, ids = experiment
    code, _, err = _runs(capsys, f"paths.output_dir={tmp_path}", "name=never_ran")
    assert code == 2 and err.strip() == (f"soup-exp runs: error: no W&B directory at {tmp_path / 'never_ran' / 'wandb'}: "
                                         "nothing of this experiment was logged to W&B (no stage has run, or "
                                         "logger.mode=disabled)")
    code, _, err = _runs(capsys, str(out), "nosuchid")
    assert code == 2 and "no W&B run 'nosuchid'" in err and ids["soup"] in err

    damaged = shutil.copytree(out / "wandb", tmp_path / "damaged" / "wandb")
    (folder,) = [d for d in run_dirs(damaged) if d.name.endswith(ids["soup"])]
    file = next(folder.glob("run-*.wandb"))
    data = bytearray(file.read_bytes())
    for i in range(200, len(data) - 50, 37):
        data[i] ^= 0x5A
    file.write_bytes(bytes(data))
    code, text, err = _runs(capsys, str(damaged))
    assert code == 2 and "W&B runs in" in text and "finetune  ft_001" in text  # the others are still listed
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"soup-exp runs: error: {file}: ")
    assert "damaged" in err
    with pytest.raises(WandbFileError, match=str(file)):
        read_offline_run(file, timeout=0)
    (folder / file.name).write_bytes(b"not a run")
    code, _, err = _runs(capsys, str(folder))
    assert code == 2 and err.strip() == f"soup-exp runs: error: {file} is not a W&B run file (missing ':W&B' header)"


def test_runs_is_listed_in_the_usage(capsys):
    cli_main(["--help"])
    assert "runs       what each stage's W&B run logged" in capsys.readouterr().out
