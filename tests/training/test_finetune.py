"""run_finetune end to end on the miniature data: the three modes write valid ingredients,
reruns are no-ops, foreign output directories and diverging runs stop with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from soup_exp.errors import OutputConflictError, SoupExpError
from soup_exp.finetune import run_finetune
from soup_exp.training.loop import NonFiniteLossError

KEYS = {"name", "kind", "base_model", "classes", "hparams", "held_out_accuracy", "metrics",
        "config", "code_version", "created"}


def _info(path: Path) -> dict:
    return json.loads((path / "ingredient.json").read_text())


def test_a_finished_ingredient_run_again_writes_no_wandb_run(tiny_root: Path, compose_tiny) -> None:
    from soup_exp.tracking.offline_runs import read_offline_run, run_dirs
    from soup_exp.tracking.wandb_run import wandb_dir

    cfg = compose_tiny(tiny_root, "train.mode=zeroshot", f"train.output_dir={tiny_root / 'zs'}", "logger.mode=offline")
    run_finetune(cfg.copy())
    (first,) = run_dirs(wandb_dir(cfg))
    assert read_offline_run(first).summary["held_out_accuracy"] == _info(tiny_root / "zs")["held_out_accuracy"]
    run_finetune(cfg.copy())  # a finished ingredient of this configuration: nothing to do, nothing logged
    assert run_dirs(wandb_dir(cfg)) == [first]


def test_modes_write_ingredients_and_reruns_are_no_ops(tiny_root: Path, compose_tiny, caplog) -> None:
    zs = run_finetune(compose_tiny(tiny_root, "train.mode=zeroshot", "train.output_dir=" + str(tiny_root / "zs")))
    lp = run_finetune(compose_tiny(tiny_root, "sweep=lp_init"))
    ft = run_finetune(compose_tiny(tiny_root, "sweep=demo", "sweep.index=1", "train.epochs=2"))
    assert ft.name == "ft_001" and lp.name == "lp_init"
    for path, kind in ((zs, "zeroshot"), (lp, "lp"), (ft, "finetune")):
        info = _info(path)
        assert set(info) >= KEYS and info["kind"] == kind
        assert info["base_model"] == "open_clip:soup-tiny-vit:random"
        assert info["classes"] == [0, 1, 2, 3] and 0.0 <= info["held_out_accuracy"] <= 1.0
        assert info["held_out_precision"] == "fp32"  # CPU; the paper preset evaluates in fp32 on GPU too
        weights = load_file(str(path / "model.safetensors"))
        assert {"head.weight", "head.bias"} <= set(weights)
        assert all(k.startswith(("image_encoder.", "head.")) for k in weights)
        assert not (path / "run.json").exists() and not (path / "checkpoints").exists()
    ft_info = _info(ft)
    assert ft_info["sweep"]["kind"] == "random" and ft_info["hparams"]["lr"] == ft_info["sweep"]["drawn"]["lr"]
    assert ft_info["metrics"]["init"]["from"] == str(lp)
    assert ft_info["config"]["train"]["lr"] == ft_info["hparams"]["lr"]

    before = (ft / "ingredient.json").read_text()
    caplog.set_level("INFO")
    assert run_finetune(compose_tiny(tiny_root, "sweep=demo", "sweep.index=1", "train.epochs=2")) == ft
    assert "nothing to do" in caplog.text and (ft / "ingredient.json").read_text() == before

    with pytest.raises(OutputConflictError, match="different configuration") as conflict:
        run_finetune(compose_tiny(tiny_root, "sweep=demo", "sweep.index=1", "train.epochs=3"))
    differences = str(conflict.value).split("(", 1)[1].rsplit(")", 1)[0]
    assert "epochs: there 2, this run 3" in differences and "lr" not in differences  # only what differs


def test_missing_init_ingredient_says_how_to_make_it(tiny_root: Path, compose_tiny) -> None:
    with pytest.raises(SoupExpError, match="sweep=lp_init"):
        run_finetune(compose_tiny(tiny_root, "sweep=demo", "sweep.index=0"))


def test_non_finite_loss_names_the_step_and_last_checkpoint(tiny_root: Path, compose_tiny, monkeypatch) -> None:
    import torch

    import soup_exp.training.loop as loop

    def diverging_loss(settings, mixing):
        calls = []

        def loss(logits, targets):
            calls.append(1)
            value = torch.nn.functional.cross_entropy(logits, targets)
            return value * float("nan") if len(calls) == 5 else value

        return loss

    monkeypatch.setattr(loop, "build_loss", diverging_loss)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 .*last good checkpoint: .*last.pt \(step 4\)"):
        run_finetune(compose_tiny(tiny_root, "train.epochs=2", "train.ckpt_every_steps=2", "sweep.name=boom"))
    assert (tiny_root / "outputs/t/ingredients/boom/checkpoints/last.pt").is_file()
    assert not (tiny_root / "outputs/t/ingredients/boom/ingredient.json").exists()


def test_the_batch_is_described_without_plural_slips() -> None:
    from soup_exp.training.loop import describe_batch

    assert describe_batch(64, 1, 64, 1) == "batch 64"
    assert describe_batch(64, 1, 32, 2) == "global batch 64 = 1 rank x 32 x 2 accumulation steps"
    assert describe_batch(512, 4, 128, 1) == "global batch 512 = 4 ranks x 128"


def test_a_capped_warmup_is_planned_as_the_value_the_run_uses(tiny_root: Path, compose_tiny) -> None:
    """40 training images (48 minus 2 held out per class) in batches of 8: 5 steps, so a
    warmup of 20 is capped at 1, and the plan says 1 as the run will use it."""
    from soup_exp.finetune import describe_run, resolve_run
    from soup_exp.training.optim import describe_warmup

    assert describe_warmup(20, 72) == "warmup 14 (train.warmup_steps=20, capped at 20% of 72 steps)"
    assert describe_warmup(2, 100) == "warmup 2"
    capped = describe_run(resolve_run(compose_tiny(tiny_root, "train.warmup_steps=20")))
    assert "batch_size=8, warmup 1 (train.warmup_steps=20, capped at 20% of 5 steps), label_smoothing" in capped
    three_epochs = describe_run(resolve_run(compose_tiny(tiny_root, "train.warmup_steps=3", "train.epochs=3")))
    assert "batch_size=8, warmup 3, label_smoothing" in three_epochs  # 15 steps: 20% is 3, not capped


def test_a_plan_before_the_training_set_exists_gives_the_rule_that_fixes_the_warmup(tmp_path: Path,
                                                                                      compose_tiny) -> None:
    from soup_exp.finetune import describe_run, resolve_run

    line = describe_run(resolve_run(compose_tiny(tmp_path, "train.warmup_steps=20", "train.max_steps=50")))
    assert ("warmup min(20, 20% of the steps) with steps = 1 epochs x (training images // 8), at most "
            "train.max_steps=50: the training set cannot be listed yet to count them") in line


def test_the_training_log_states_the_capped_warmup_it_uses(tiny_root: Path, compose_tiny, caplog) -> None:
    caplog.set_level("INFO", logger="soup_exp.training.loop")
    run_finetune(compose_tiny(tiny_root, "sweep.name=capped", "train.warmup_steps=20"))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training ")]
    assert line == ("training 5 steps (5 per epoch, batch 8), "
                    "warmup 1 (train.warmup_steps=20, capped at 20% of 5 steps)")


def test_a_capped_linear_probe_warmup_is_said_in_the_plan_and_the_log(tiny_root: Path, compose_tiny,
                                                                       caplog) -> None:
    """The LP caps its warmup as the fine-tunes do (40 images in batches of the LP's size), and says so."""
    from soup_exp.finetune import describe_run, resolve_run

    cfg = compose_tiny(tiny_root, "sweep=lp_init", "train.lp.warmup_steps=500")
    plan = describe_run(resolve_run(cfg))
    assert ", warmup " in plan and "(train.lp.warmup_steps=500, capped at 20% of " in plan
    planned = plan.split(", warmup ", 1)[1].split(" ", 1)[0]
    caplog.set_level("INFO", logger="soup_exp.training.lp")
    run_finetune(cfg)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("linear probe: ")]
    assert f"warmup {planned} (train.lp.warmup_steps=500, capped at 20% of " in line
