"""The soup stage end to end on a tiny MLP 'classifier' and an in-memory held-out set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from child_process import run_in_child
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from stage_errors import stage_error
from torch import nn

import soup_exp.soups.learned as learned
from soup_exp.errors import ConfigError
from soup_exp.soup import run_soups
from soup_exp.soups.judge import Judge
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.stages.experiment import run_stage

USER_REPO = Path(__file__).parents[1] / "user_repo"
PAPER_RECIPES = ["uniform", "greedy", "learned_per_model", "learned_by_layer", "model_stock", "ensemble",
                 "greedy_ensemble", "wise_ft"]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Linear(6, 12), nn.Tanh())
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(self.image_encoder(x))


class FakeEvaluator:
    """The Evaluator methods the soup stage uses, over fixed tensors."""

    device = torch.device("cpu")
    precision = "fp32"
    transform = SimpleNamespace(key="fixed-transform")

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.passes = 0

    numerics = "fp32"

    def dataset(self, name):
        return _Identity()

    def scores_identity(self, name):
        return f"{name}-fixed-data"

    def batches(self, name, batch_size, shuffle=False, generator=None):
        order = torch.randperm(len(self.y), generator=generator) if shuffle else torch.arange(len(self.y))
        for i in range(0, len(order), batch_size):
            yield self.x[order[i:i + batch_size]], self.y[order[i:i + batch_size]]

    @torch.no_grad()
    def logits(self, model, name):
        self.passes += 1
        return model(self.x)

    def accuracy_from_logits(self, logits, name):
        return (logits.argmax(1) == self.y).float().mean().item()

    def member_logits(self, logits, name):
        return logits

    def ensemble_accuracy(self, mean_logits, name):
        return self.accuracy_from_logits(mean_logits, name)

    def heldout_accuracy_fn(self, skeleton, name):
        def accuracy(sd):
            skeleton.load_state_dict(sd, strict=True)
            return self.accuracy_from_logits(self.logits(skeleton, name), name)
        return accuracy


class _Identity:
    def identity(self):
        return "fixed-held-out-set"


class FakeRun:
    def __init__(self):
        self.tables, self.logs, self.summaries = {}, [], {}

    def log(self, metrics, step=None):
        self.logs.append(metrics)

    def log_table(self, key, columns, rows):
        self.tables[key] = (columns, rows)

    def summary(self, values):
        self.summaries.update(values)

    def finish(self):
        pass


def _train(model, x, y, steps, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def pool(tmp_path, make_run):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=g) * 1.5
    y = torch.randint(0, 4, (200,), generator=g)
    x = centers[y] + torch.randn(200, 6, generator=g)
    torch.manual_seed(0)
    zeroshot = Tiny()
    zs_sd = _train(zeroshot, x, y, 5, 0.1, 99)
    out = tmp_path / "exp"
    make_run(out, "zeroshot", zs_sd, kind="zeroshot")
    evaluator = FakeEvaluator(x, y)
    for i in range(5):
        model = Tiny()
        model.load_state_dict(zs_sd)
        sd = _train(model, x, y, 10 + 10 * i, 0.05 * (i + 1), i)
        info = {"held_out_accuracy": evaluator.accuracy_from_logits(model(x).detach(), "h")} if i != 2 else {}
        make_run(out / "ingredients", f"ft_{i}", sd, **info)
    (out / "ingredients" / "crashed").mkdir()
    save_file(sd, str(out / "ingredients" / "crashed" / "model.safetensors"))
    return out, evaluator


def _cfg(out, recipes, *extra):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="soup", overrides=[
            f"paths.output_dir={out.parent}", f"name={out.name}", "progress=false", "logger=disabled",
            f"recipes=[{','.join(recipes)}]", *[o for o in (
                "recipes.learned_per_model.epochs=2", "recipes.learned_per_model.batch_size=64",
                "recipes.learned_by_layer.epochs=2", "recipes.learned_by_layer.batch_size=64",
                "recipes.wise_ft.alphas=[0.0,0.5,1.0]") if o.split(".")[1] in recipes], *extra])


def _patch(monkeypatch, evaluator):
    monkeypatch.setattr(Judge, "classes", property(lambda self: None))
    monkeypatch.setattr(Judge, "_classifier", property(lambda self: self._memo("classifier", lambda: (Tiny(), None))))
    monkeypatch.setattr(Judge, "_evaluator", property(lambda self: evaluator))


def test_all_recipes_then_resume(pool, monkeypatch, caplog):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    run = FakeRun()
    with caplog.at_level("INFO"):
        made = run_soups(_cfg(out, PAPER_RECIPES), run=run)
    expected = {"uniform", "greedy", "learned_per_model", "learned_by_layer", "ensemble",
                "greedy_ensemble", "model_stock"} | {f"wise_ft_greedy_a{a:.2f}" for a in (0.0, 0.5, 1.0)}
    assert set(made) == expected
    assert "crashed" in caplog.text  # unfinished run skipped with a note
    records = {name: json.loads((path / "soup.json").read_text()) for name, path in made.items()}
    for name, record in records.items():
        assert record["name"] == name
        has_weights = (made[name] / "model.safetensors").is_file()
        assert has_weights == (record["kind"] != "ensemble")
        assert "ft_0" not in record["ingredients"] or record["base_model"] == "test:tiny"
    best = max(r["accuracy"] for r in records["greedy"]["history"])
    assert records["greedy"]["held_out_accuracy"] >= records["greedy"]["history"][0]["accuracy"]
    assert records["greedy"]["held_out_accuracy"] == best
    assert records["greedy_ensemble"]["held_out_accuracy"] >= records["greedy_ensemble"]["history"][0]["accuracy"]
    assert records["greedy"]["label"] == "Greedy soup" and records["wise_ft_greedy_a0.50"]["kind"] == "wise_ft"
    assert len(records["greedy"]["history"]) == 5
    assert records["ensemble"]["members"] == [f"ft_{i}" for i in range(5)]
    assert len(records["learned_by_layer"]["coefficients"]) == 4
    assert isinstance(records["learned_per_model"]["beta"], float)
    assert "greedy/history" in run.tables and "learned_by_layer/coefficients" in run.tables
    wise0 = (made["wise_ft_greedy_a0.00"] / "model.safetensors").read_bytes()
    assert wise0  # alpha 0 is the zero-shot model
    passes = evaluator.passes
    caplog.clear()
    with caplog.at_level("INFO"):
        again = run_soups(_cfg(out, PAPER_RECIPES), run=FakeRun())
    assert again == made
    assert evaluator.passes == passes  # nothing recomputed
    assert caplog.text.count("is cooked from these ingredients and settings: skipping") == len(expected) - 3
    assert "stale" not in caplog.text


def test_a_rerun_with_every_soup_cooked_writes_no_wandb_run(pool, monkeypatch):
    """A real offline W&B run for the soups cooked; a rerun that cooks nothing adds none."""
    from soup_exp.tracking.offline_runs import read_offline_run, run_dirs

    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    cfg = _cfg(out, ["uniform", "greedy"], "logger.mode=offline")
    run_soups(cfg)
    (first,) = run_dirs(out / "wandb")
    logged = read_offline_run(first)
    assert logged.stage == "soup" and logged.state == "finished"
    assert "greedy/held_out_accuracy" in logged.summary and logged.last_values()
    run_soups(cfg)
    assert run_dirs(out / "wandb") == [first]


def _textbook_ties(models: list[dict], base: dict, density: float, scale: float) -> dict:
    """TIES-merging as the paper writes it: every task vector of a tensor stacked at once."""
    out = {}
    for key, start in base.items():
        tasks = torch.stack([m[key] - start for m in models]).flatten(1)
        keep = max(1, round(density * tasks.shape[1]))
        top = tasks.abs().topk(keep, dim=1).indices
        trimmed = torch.zeros_like(tasks).scatter_(1, top, tasks.gather(1, top))
        agree = (trimmed.sign() == trimmed.sum(0).sign()) & (trimmed != 0)
        merged = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
        out[key] = start + scale * merged.view(start.shape)
    return out


def test_a_user_kernel_recipe_is_cooked_by_the_stage_and_kept(pool, monkeypatch, caplog):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    monkeypatch.syspath_prepend(str(USER_REPO))
    monkeypatch.delitem(sys.modules, "my_soups", raising=False)
    user_conf = f"hydra.searchpath=[file://{USER_REPO / 'conf'}]"
    made = run_soups(_cfg(out, ["ties"], user_conf, "recipes.ties.density=0.5"), run=FakeRun())
    record = json.loads((made["ties"] / "soup.json").read_text())
    assert record["label"] == "TIES merging" and record["base"] == "zeroshot"
    assert record["params"] == {"base": "zeroshot", "density": 0.5, "scale": 1.0}
    assert record["ingredients"] == [f"ft_{i}" for i in range(5)]
    models = [load_file(out / "ingredients" / f"ft_{i}" / "model.safetensors") for i in range(5)]
    expected = _textbook_ties(models, load_file(out / "zeroshot" / "model.safetensors"), 0.5, 1.0)
    cooked = load_file(made["ties"] / "model.safetensors")
    assert list(cooked) == list(expected)
    assert all(torch.allclose(cooked[k], expected[k], atol=1e-6) for k in expected)
    with caplog.at_level("INFO"):
        run_soups(_cfg(out, ["ties"], user_conf, "recipes.ties.density=0.5"), run=FakeRun())
    assert "is cooked from these ingredients and settings: skipping" in caplog.text
    with pytest.raises(ConfigError, match=r"recipes\.ties\.density=0: expected a value in \(0, 1\]"):
        run_soups(_cfg(out, ["ties"], user_conf, "recipes.ties.density=0"), run=FakeRun())
    with pytest.raises(ConfigError, match=r"recipes\.ties\.base='init': expected one of"):
        run_soups(_cfg(out, ["ties"], user_conf, "recipes.ties.base=init"), run=FakeRun())


def test_unknown_recipe(pool):
    out, _ = pool
    from hydra.errors import MissingConfigException

    from soup_exp.errors import ConfigError

    with pytest.raises(MissingConfigException, match="soupe"):
        _cfg(out, ["uniform", "soupe"])
    with pytest.raises(ConfigError, match=r"recipes\.greedy\.tolerance=-1.*\[0, inf\]"):
        run_soups(_cfg(out, ["uniform", "greedy"], "recipes.greedy.tolerance=-1"), run=FakeRun())
    with pytest.raises(ConfigError, match=r"recipes\.learned_per_model\.batch_size=-5"):
        run_soups(_cfg(out, ["learned_per_model"], "recipes.learned_per_model.batch_size=-5"), run=FakeRun())
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['tolerence'\]"):
        run_soups(_cfg(out, ["greedy"], "+recipes.greedy.tolerence=0.1"), run=FakeRun())
    assert not (out / "soups").exists()  # checked before anything is cooked


def _records(out) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "soups").glob("*/soup.json")}


def _grow_pool(out, make_run, names):

    base = load_file(str(out / "ingredients" / "ft_0" / "model.safetensors"))
    for k, name in enumerate(names):
        g = torch.Generator().manual_seed(100 + k)
        make_run(out / "ingredients", name, {key: v + 0.01 * torch.randn(v.shape, generator=g)
                                              for key, v in base.items()})


def test_a_grown_pool_recooks_every_soup_and_the_log_says_why(pool, monkeypatch, caplog, make_run):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    first = run_soups(_cfg(out, PAPER_RECIPES), run=FakeRun())
    _grow_pool(out, make_run, ["ft_5", "ft_6"])
    caplog.clear()
    with caplog.at_level("INFO"):
        again = run_soups(_cfg(out, PAPER_RECIPES), run=FakeRun())
    assert set(again) == set(first)
    records = _records(out)
    for name in first:
        assert f"soup '{name}' in {out / 'soups' / name} is stale: the pool changed (5 -> 7 ingredients: " \
               "added ft_5, ft_6)" in caplog.text, name
        assert [entry[0] for entry in records[name]["inputs"]["pool"]][-2:] == ["ft_5", "ft_6"], name
    assert records["uniform"]["ingredients"][-2:] == ["ft_5", "ft_6"]
    assert records["ensemble"]["members"][-2:] == ["ft_5", "ft_6"]
    assert "settings: skipping" not in caplog.text


def test_rewritten_weights_under_the_same_name_recook_the_soup_and_the_log_says_why(pool, monkeypatch, caplog):
    """Same pool names, but ft_1 fine-tuned again in place: the uniform soup must follow."""
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    run_soups(_cfg(out, ["uniform"]), run=FakeRun())
    soup_file = out / "soups" / "uniform" / "model.safetensors"
    weights = out / "ingredients" / "ft_1" / "model.safetensors"
    old_soup, old = load_file(str(soup_file)), load_file(str(weights))
    g = torch.Generator().manual_seed(7)
    new = {key: v + torch.randn(v.shape, generator=g) for key, v in old.items()}
    save_file(new, str(weights), metadata={"retrained": "yes"})  # other values, another size
    later = os.stat(weights).st_mtime_ns + 10**9
    os.utime(weights, ns=(later, later))  # a later mtime even on a coarse-clock file system
    caplog.clear()
    with caplog.at_level("INFO"):
        run_soups(_cfg(out, ["uniform"]), run=FakeRun())
    assert f"soup 'uniform' in {out / 'soups' / 'uniform'} is stale: the pool changed (5 -> 5 ingredients: " \
           "new weights for ft_1)" in caplog.text
    assert "settings: skipping" not in caplog.text
    souped = _records(out)["uniform"]["ingredients"]
    assert "ft_1" in souped
    for key, value in load_file(str(soup_file)).items():
        torch.testing.assert_close(value, old_soup[key] + (new[key] - old[key]) / len(souped))


def test_only_soups_whose_inputs_changed_are_recooked(pool, monkeypatch, caplog):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    run_soups(_cfg(out, ["uniform", "greedy", "wise_ft"]), run=FakeRun())
    before = _records(out)
    caplog.clear()
    with caplog.at_level("INFO"):
        run_soups(_cfg(out, ["uniform", "greedy", "wise_ft"], "recipes.greedy.tolerance=0.5"), run=FakeRun())
    after = _records(out)
    assert "soup 'greedy'" in caplog.text and "recipe parameters changed (tolerance: 0.0 -> 0.5)" in caplog.text
    assert after["uniform"]["created"] == before["uniform"]["created"] and "soup 'uniform' in" in caplog.text
    assert after["greedy"]["params"]["tolerance"] == 0.5
    # WiSE-FT interpolates the re-cooked greedy soup, so its soups follow
    assert "soup 'wise_ft_greedy_a0.50'" in caplog.text and "the models it was cooked from changed (greedy)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        run_soups(_cfg(out, ["uniform", "greedy"], "recipes.greedy.tolerance=0.5", "soup.arithmetic=sum"),
                  run=FakeRun())
    assert caplog.text.count("the soup's numerics changed (soup.accumulate_dtype or soup.arithmetic)") == 2


def test_a_narrowed_pool_recooks_its_soups_and_names_the_removed_ingredients(pool, monkeypatch, caplog):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    run_soups(_cfg(out, ["uniform", "greedy"]), run=FakeRun())
    subset = [str(out / "ingredients" / name) for name in ("ft_0", "ft_1", "ft_3")]
    caplog.clear()
    with caplog.at_level("INFO"):
        run_soups(_cfg(out, ["uniform", "greedy"], f"soup.pool=[{','.join(subset)}]"), run=FakeRun())
    assert caplog.text.count("the pool changed (5 -> 3 ingredients: removed ft_2, ft_4)") == 2
    assert json.loads((out / "soups" / "uniform" / "soup.json").read_text())["ingredients"] == ["ft_0", "ft_1", "ft_3"]


def test_a_shrunk_wise_ft_grid_retires_the_dropped_alphas(pool, monkeypatch, caplog):
    from soup_exp.artifacts import read_soups

    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    run_soups(_cfg(out, ["uniform", "greedy", "wise_ft"]), run=FakeRun())
    with caplog.at_level("INFO"):
        made = run_soups(_cfg(out, ["uniform", "greedy", "wise_ft"], "recipes.wise_ft.alphas=[0.5]"), run=FakeRun())
    assert {n for n in made if n.startswith("wise_ft")} == {"wise_ft_greedy_a0.50"}
    assert sorted(p.name for p in (out / "soups" / ".stale").iterdir()) == ["wise_ft_greedy_a0.00",
                                                                            "wise_ft_greedy_a1.00"]
    assert "soup 'wise_ft_greedy_a0.00' is no longer made by recipe wise_ft" in caplog.text
    found = {e.name for e in read_soups(out / "soups", {})}
    assert found == {"uniform", "greedy", "wise_ft_greedy_a0.50"}
    run_soups(_cfg(out, ["uniform"]), run=FakeRun())  # soups of recipes not selected now stay
    assert (out / "soups" / "greedy" / "soup.json").is_file()


def test_held_out_scores_measured_on_other_data_are_measured_again(pool, monkeypatch, caplog):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    for name, data in (("ft_0", "ImageNet2p-fixed-data"), ("ft_1", "another-split")):
        path = out / "ingredients" / name / "ingredient.json"
        info = json.loads(path.read_text())
        path.write_text(json.dumps({**info, "held_out_precision": "fp32", "held_out_data": data}))
    with caplog.at_level("INFO"):
        run_soups(_cfg(out, ["greedy"]), run=FakeRun())
    assert "held-out accuracy of ft_0 is not recorded" not in caplog.text
    assert "held-out accuracy of ft_1 is not recorded for this held-out data at fp32: evaluating it" in caplog.text


def test_a_copied_experiment_keeps_its_soups(pool, monkeypatch, caplog, tmp_path):
    import shutil

    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    run_soups(_cfg(out, ["uniform", "greedy", "wise_ft"]), run=FakeRun())
    copy = tmp_path / "elsewhere" / "exp"
    shutil.copytree(out, copy)  # keeps modification times, as cp -a and mv do
    with caplog.at_level("INFO"):
        run_soups(_cfg(copy, ["uniform", "greedy", "wise_ft"]), run=FakeRun())
    assert "stale" not in caplog.text
    assert caplog.text.count("is cooked from these ingredients and settings: skipping") == 2


# ---- Ctrl-C mid-learned-soup: one line, exit 130, its state kept; the rerun resumes from that batch

LEARNED_RECIPES = ["uniform", "learned_by_layer"]  # 200 held-out rows in batches of 64: 4 steps per epoch, 2 epochs


def _with_hook(hook):
    """The learned soup with ``hook(point)`` called after each step (and the recipe's own)."""
    real = learned.learned_soup

    def soup(*args, on_step, **kwargs):
        return real(*args, on_step=lambda point: (on_step(point), hook(point)), **kwargs)
    return soup


def _sigint_after(step):
    def hook(point):
        if point["step"] + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
    return hook


def _soup(out, name="learned_by_layer"):
    folder = out / "soups" / name
    return json.loads((folder / "soup.json").read_text()), load_file(str(folder / "model.safetensors"))


def _stop_in_child(out, step, *overrides):
    def child():
        learned.learned_soup = _with_hook(_sigint_after(step))
        run_stage(_cfg(out, LEARNED_RECIPES, *overrides), run_soups)
    return run_in_child(child)


def test_sigint_mid_learned_soup_is_one_line_then_the_rerun_resumes_to_identical_coefficients(
        pool, monkeypatch, caplog, tmp_path):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    straight = tmp_path / "straight"
    shutil.copytree(out, straight)  # the same ingredients (mtimes kept): the same pool
    run_soups(_cfg(straight, LEARNED_RECIPES), run=FakeRun())

    status, err = _stop_in_child(out, 6)
    state = out / "soups" / "learned_by_layer" / "state.safetensors"
    assert status == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == (f"soup-exp soup: stopped by SIGINT at step 6, epoch 2 of 2 (checkpoint "
                                           f"{state}); rerun the same command to resume")
    with safe_open(str(state), framework="pt") as f:
        assert json.loads(f.metadata()["progress"])["epoch"] == 1
        assert json.loads(f.metadata()["progress"])["batch"] == 2
    assert (out / "soups" / "uniform" / "soup.json").is_file()
    assert not (out / "soups" / "learned_by_layer" / "soup.json").exists()

    steps = []
    monkeypatch.setattr(learned, "learned_soup", _with_hook(steps.append))
    with caplog.at_level("INFO"):
        run_stage(_cfg(out, LEARNED_RECIPES), run_soups)
    assert f"resuming learned soup from {state}: epoch 2 of 2, 2 batches into it (step 6)" in caplog.text
    assert "soup 'uniform' in" in caplog.text and "settings: skipping" in caplog.text
    assert [point["step"] for point in steps] == [6, 7]
    assert not state.exists()  # the soup is written: its state is gone

    (expected, expected_weights), (record, weights) = _soup(straight), _soup(out)
    for key in ("coefficients", "beta", "curve", "held_out_accuracy"):
        assert record[key] == expected[key], key
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)


@pytest.mark.parametrize(("override", "why"), [
    ("recipes.learned_by_layer.lr=0.1", "recipe parameters changed (lr: 0.05 -> 0.1)"),
    ("seed=1", "the seed (which orders the held-out batches) changed"),
    ("grown", "the pool changed (5 -> 6 ingredients: added ft_5)"),
])
def test_state_of_another_pool_or_recipe_is_not_resumed_and_the_log_says_why(
        pool, monkeypatch, caplog, tmp_path, make_run, override, why):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    status, err = _stop_in_child(out, 3)
    assert status == 130, err
    overrides = [] if override == "grown" else [override]
    if override == "grown":
        base = load_file(str(out / "ingredients" / "ft_0" / "model.safetensors"))
        make_run(out / "ingredients", "ft_5", {k: v + 0.01 for k, v in base.items()})
    straight = tmp_path / "straight"
    shutil.copytree(out, straight)
    shutil.rmtree(straight / "soups")
    run_soups(_cfg(straight, LEARNED_RECIPES, *overrides), run=FakeRun())

    steps = []
    monkeypatch.setattr(learned, "learned_soup", _with_hook(steps.append))
    with caplog.at_level("INFO"):
        run_stage(_cfg(out, LEARNED_RECIPES, *overrides), run_soups)
    state = out / "soups" / "learned_by_layer" / "state.safetensors"
    assert f"{state} was saved for other inputs ({why}): starting the learned soup afresh" in caplog.text
    assert len(steps) == 8 and not state.exists()
    (expected, expected_weights), (record, weights) = _soup(straight), _soup(out)
    assert record["coefficients"] == expected["coefficients"] and record["curve"] == expected["curve"]
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)


def test_a_finished_learned_soup_follows_the_seed_that_ordered_its_batches(pool, monkeypatch, caplog):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    run_soups(_cfg(out, LEARNED_RECIPES), run=FakeRun())
    assert _records(out)["learned_by_layer"]["inputs"]["seed"] == 0 and "seed" not in _records(out)["uniform"]["inputs"]
    with caplog.at_level("INFO"):
        run_soups(_cfg(out, LEARNED_RECIPES, "seed=1"), run=FakeRun())
    assert "soup 'learned_by_layer' in" in caplog.text
    assert "is stale: the seed (which orders the held-out batches) changed; cooking it again" in caplog.text
    assert "soup 'uniform' in" in caplog.text and caplog.text.count("is stale") == 1


@pytest.mark.parametrize("damage", ["torn", "foreign"])
def test_a_damaged_learned_state_is_named(pool, monkeypatch, capsys, damage):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    state = out / "soups" / "learned_by_layer" / "state.safetensors"
    state.parent.mkdir(parents=True)
    if damage == "torn":
        state.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{torn")
    else:
        save_file({"raw": torch.zeros(4, 5)}, str(state))
    err = stage_error(_cfg(out, ["learned_by_layer"]), run_soups, capsys)
    assert str(state) in err and "delete it" in err.lower(), err


def test_the_python_api_with_its_defaults_cooks_the_stages_soups_bit_for_bit(pool, monkeypatch):
    """uniform_soup and greedy_soup default to the CLI's soup.arithmetic (authors)."""
    from soup_exp.soups import greedy_soup, uniform_soup

    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    made = run_soups(_cfg(out, ["uniform", "greedy"]), run=FakeRun())
    api = {"uniform": uniform_soup(out / "ingredients"),
           "greedy": greedy_soup(out / "ingredients", None, evaluator.heldout_accuracy_fn(Tiny(), "h")).state_dict}
    for name, state_dict in api.items():
        cooked = load_file(str(made[name] / "model.safetensors"))
        assert cooked.keys() == state_dict.keys()
        for key, tensor in cooked.items():
            assert tensor.dtype == state_dict[key].dtype and torch.equal(tensor, state_dict[key]), (name, key)
    summed = uniform_soup(out / "ingredients", arithmetic="sum")
    assert any(not torch.equal(summed[k], api["uniform"][k]) for k in summed)  # the default is what decides


# ---- cost: what each recipe took, recorded in its soups, no input of theirs

def test_each_soup_records_what_its_recipe_cost_and_a_rerun_keeps_it(pool, monkeypatch):
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    made = run_soups(_cfg(out, ["uniform", "greedy", "wise_ft"]), run=FakeRun())
    records = _records(out)
    n = 5
    for name, record in records.items():
        cost = record["cost"]
        assert set(cost) == {"wall_s", "peak_host_bytes", "peak_device_bytes", "held_out_passes",
                             "ingredient_reads"}, name
        assert cost["wall_s"] > 0 and cost["peak_host_bytes"] > 0, name
        assert cost["peak_device_bytes"] is None, name  # the tiny judge runs on the CPU
        assert "cost" not in record["inputs"], name
    uniform, greedy = records["uniform"]["cost"], records["greedy"]["cost"]
    assert uniform["ingredient_reads"] == n and uniform["held_out_passes"] == 0
    # greedy: no ingredient of the tiny pool records its held-out accuracy at the judge's numerics
    # (no held_out_precision), so each is scored once; then each of the other N - 1 is tried once
    assert greedy["held_out_passes"] == n + (n - 1) == evaluator.passes  # uniform ran none
    # WiSE-FT's soups: each the cost up to its own yield; each alpha reads the zero-shot model and greedy
    wise = [records[f"wise_ft_greedy_a{a:.2f}"]["cost"] for a in (0.0, 0.5, 1.0)]
    assert [c["ingredient_reads"] for c in wise] == [2, 4, 6]
    assert wise[0]["wall_s"] <= wise[1]["wall_s"] <= wise[2]["wall_s"]

    before = {name: (made[name] / "soup.json").read_bytes() for name in made}
    edited = {**records["uniform"], "cost": {**records["uniform"]["cost"], "wall_s": 12345.0}}
    (made["uniform"] / "soup.json").write_text(json.dumps(edited))
    passes = evaluator.passes
    run_soups(_cfg(out, ["uniform", "greedy", "wise_ft"]), run=FakeRun())
    assert evaluator.passes == passes  # every soup skipped: its cost is no input
    assert _records(out)["uniform"]["cost"]["wall_s"] == 12345.0
    assert all((made[name] / "soup.json").read_bytes() == before[name] for name in made if name != "uniform")


def test_pruned_greedy_and_mehl_soup_are_cooked_by_the_stage_and_kept(pool, monkeypatch, caplog):
    """The recipes of tests/soups/test_pruned_greedy.py and test_mehl.py through the real stage."""
    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    overrides = ("recipes.mehl_soup.block_size=2", "recipes.mehl_soup.epochs=2", "recipes.mehl_soup.batch_size=64")
    run = FakeRun()
    made = run_soups(_cfg(out, ["greedy", "pruned_greedy", "mehl_soup"], *overrides), run=run)
    greedy, pruned, mehl = (json.loads((made[n] / "soup.json").read_text())
                            for n in ("greedy", "pruned_greedy", "mehl_soup"))
    assert pruned["label"] == "Pruned greedy soup" and pruned["held_out_accuracy"] >= greedy["held_out_accuracy"]
    assert pruned["history"][:len(greedy["history"])] == [{**h, "pass": 0, "action": "add"} for h in greedy["history"]]
    assert pruned["passes"] >= 1 and set(pruned["ingredients"]) <= {f"ft_{i}" for i in range(5)}
    assert mehl["label"] == "MEHL soup" and "beta" not in mehl
    assert len(mehl["coefficients"]) == 4 and all(len(row) == 5 for row in mehl["coefficients"].values())
    assert all(sum(row) == pytest.approx(1.0) for row in mehl["coefficients"].values())
    assert [len(b) for b in mehl["blocks"]] == [2, 2, 1] and len(mehl["curve"]) == 3 * 2 * 4
    assert "mehl_soup/coefficients" in run.tables and "pruned_greedy/history" in run.tables
    assert not list((out / "soups").glob("*/state*"))  # the resume state is removed once written
    passes = evaluator.passes
    with caplog.at_level("INFO"):
        assert run_soups(_cfg(out, ["greedy", "pruned_greedy", "mehl_soup"], *overrides), run=FakeRun()) == made
    assert evaluator.passes == passes


def test_a_cooked_wise_ft_grid_is_planned_and_logged_as_cooked(pool, monkeypatch, caplog):
    from soup_exp.soup import plan_soups

    out, evaluator = pool
    _patch(monkeypatch, evaluator)
    cfg = _cfg(out, ["uniform", "greedy", "wise_ft"], "recipes.wise_ft.alphas=[0.0,1.0]")
    before = "\n".join(plan_soups(cfg)["soup"])
    assert "wise_ft [to cook]" in before and "uniform [to cook]" in before
    run_soups(cfg, run=FakeRun())
    after = "\n".join(plan_soups(cfg)["soup"])
    assert "uniform [done, skipped]" in after
    assert "wise_ft [2 soups cooked (wise_ft_greedy_a0.00, wise_ft_greedy_a1.00), any other to cook]" in after
    with caplog.at_level("INFO"):
        run_soups(cfg, run=FakeRun())
    assert "recipe wise_ft: nothing to cook; kept wise_ft_greedy_a0.00, wise_ft_greedy_a1.00" in caplog.text
    assert "recipe wise_ft cooked" not in caplog.text
