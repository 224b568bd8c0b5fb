"""The soup stage under bad input and on shared storage: symlinked pools, hostile names,
damaged files, write-protected ingredients, a full disk; each a one-line error (exit 2)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from collections import namedtuple

import pytest
from child_process import kill_before_commit, run_in_child, shared_dir, write_protect
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file
from stage_errors import stage_error

from soup_exp.errors import ConfigError
from soup_exp.evaluate import discover_models
from soup_exp.soup import run_soups
from soup_exp.soups import greedy_soup
from soup_exp.soups.ingredients import IngredientMismatchError
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.stages.experiment import run_stage
from soup_exp.utils import io
from soup_exp.utils.io import atomic_write_json


def _cfg(out, *overrides):
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="soup", overrides=[
            f"paths.output_dir={out.parent}", f"name={out.name}", "progress=false", "logger=disabled",
            "recipes=[uniform]", *overrides])


@pytest.fixture
def experiment(tmp_path, make_run, make_sd):
    out = tmp_path / "exp"
    for i in range(2):
        make_run(out / "ingredients", f"ft_{i}", make_sd(i), held_out_accuracy=0.5 + i / 10)
    return out


def test_symlinked_runs_are_souped_and_evaluated_alike(experiment, tmp_path, make_run, make_sd):
    elsewhere = make_run(tmp_path / "scratch", "ft_9", make_sd(9), held_out_accuracy=0.4)
    pool = experiment / "ingredients"
    (pool / "linked").symlink_to(elsewhere, target_is_directory=True)
    (pool / "again").symlink_to(pool / "ft_0", target_is_directory=True)  # the same run twice
    (pool / "loop").symlink_to(pool, target_is_directory=True)  # a cycle
    (pool / "knot").symlink_to(pool / "knot")  # a link to itself: ELOOP
    made = run_soups(_cfg(experiment))
    souped = json.loads((made["uniform"] / "soup.json").read_text())["ingredients"]
    evaluated = [e.name for e in discover_models(_cfg(experiment)) if e.kind == "finetune"]
    assert sorted(souped) == sorted(evaluated) == ["ft_0", "ft_1", "ft_9"]


def test_a_name_with_separators_writes_nothing_outside(experiment, capsys):
    record = experiment / "ingredients" / "ft_1" / "ingredient.json"
    atomic_write_json(record, {**json.loads(record.read_text()), "name": "../../x"})
    err = stage_error(_cfg(experiment), run_soups, capsys)
    assert f"{record}: name '../../x' is not a valid name" in err
    assert not (experiment.parent / "x").exists() and not (experiment / "x").exists()


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, found list"),
    ('{"name": "ft_1", "held_out_accuracy": "high"}', "held_out_accuracy='high' is not an accuracy"),
])
def test_damaged_ingredient_json_is_named(experiment, capsys, content, expected):
    record = experiment / "ingredients" / "ft_1" / "ingredient.json"
    record.write_text(content)
    err = stage_error(_cfg(experiment), run_soups, capsys)
    assert str(record) in err and expected in err


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "57.0", "-0.1"])
def test_a_held_out_accuracy_that_is_not_a_fraction_is_refused_before_cooking(experiment, capsys, value):
    """Issue 25 item 3: greedy is steered by these scores, so a percentage or NaN is an error."""
    record = experiment / "ingredients" / "ft_1" / "ingredient.json"
    record.write_text(f'{{"name": "ft_1", "kind": "finetune", "held_out_accuracy": {value}}}')
    err = stage_error(_cfg(experiment, "recipes=[greedy]"), run_soups, capsys)
    assert f"{record}: held_out_accuracy={float(value)!r} is not an accuracy" in err
    assert "accuracies are fractions in [0, 1]" in err
    assert not (experiment / "soups").exists() or not any((experiment / "soups").rglob("soup.json"))


def test_a_list_typed_kind_is_an_error_in_the_preflight(experiment, capsys):
    """Issue 25 item 16: the check Hydra's callback runs (check_soups) refuses it, as the stage does."""
    from soup_exp.soup import check_soups

    record = experiment / "ingredients" / "ft_1" / "ingredient.json"
    record.write_text('{"name": "ft_1", "kind": ["finetune"], "held_out_accuracy": 0.5}')
    for stage in (check_soups, run_soups):
        err = stage_error(_cfg(experiment), stage, capsys)
        assert f"{record}: kind must be a string" in err and "['finetune']" in err
    assert not (experiment / "soups").exists() or not any((experiment / "soups").rglob("soup.json"))


def test_no_ingredients_yet(tmp_path, capsys):
    err = stage_error(_cfg(tmp_path / "fresh"), run_soups, capsys)
    assert "ingredients does not exist: no ingredients yet?" in err


def test_raw_safetensors_of_another_base_model_is_refused(experiment, tmp_path, make_sd):
    foreign = tmp_path / "foreign.safetensors"
    save_file(make_sd(5), str(foreign), metadata={"base_model": "open_clip:ViT-L-14:openai"})
    pool = f"soup.pool=[{experiment / 'ingredients'},{foreign}]"
    with pytest.raises(IngredientMismatchError, match=r"foreign.safetensors: base_model 'open_clip:ViT-L-14"):
        run_soups(_cfg(experiment, pool))


@pytest.mark.parametrize("setting", ["recipes.learned_per_model.batch_size=0",
                                     "recipes.learned_per_model.batch_size=-5",
                                     "recipes.greedy.tolerance=-1", "recipes.greedy.tolerance=null"])
def test_recipe_settings_are_checked_before_cooking(experiment, setting):
    cfg = _cfg(experiment, "recipes=[uniform,greedy,learned_per_model]", setting)
    with pytest.raises(ConfigError, match=setting.split("=")[0].replace(".", r"\.")):
        run_soups(cfg)
    assert not (experiment / "soups").exists()


@pytest.mark.parametrize("state", ["{torn", "[]", '{"fingerprint": "%s", "position": "x"}'])
def test_damaged_greedy_state_is_named(experiment, state):
    state_file = experiment / "soups" / "greedy" / "state.json"
    greedy_soup(experiment / "ingredients", None, lambda sd: 0.5, state_file=state_file)
    fingerprint = json.loads(state_file.read_text())["fingerprint"]
    state_file.write_text(state.replace("%s", fingerprint))
    with pytest.raises(Exception, match=f"{state_file}.*(JSON|not a greedy soup state)") as caught:
        greedy_soup(experiment / "ingredients", None, lambda sd: 0.5, state_file=state_file)
    assert type(caught.value).__name__ == "ArtifactError"


def _soup_as_another_user(root, make_run, make_sd, unreadable=()):
    """Two write-protected ingredients in ``root/exp`` (``unreadable`` ones mode 0400), souped
    by ``nobody``; ``(exp, exit status, stderr)``."""
    out = root / "exp"
    for i in range(2):
        make_run(out / "ingredients", f"ft_{i}", make_sd(i))
    write_protect(out / "ingredients")
    for name in unreadable:
        (out / "ingredients" / name / "model.safetensors").chmod(0o400)
    out.chmod(0o777)
    cfg = _cfg(out)
    _import_what_the_stage_imports_on_first_use()
    status, err = run_in_child(_warnings_on_stderr(lambda: run_stage(cfg, run_soups)), unprivileged=True)
    return out, status, err


def _import_what_the_stage_imports_on_first_use():
    """``nobody`` may not read the Python installation (a pyenv under a 0700 ``/root``), so the
    child can only use modules loaded before it drops root: those that open_clip, its
    tokenizer (ftfy, which looks up codecs by name) and huggingface_hub import lazily."""
    import codecs
    import http.cookiejar  # noqa: F401

    import ftfy  # noqa: F401
    import huggingface_hub.file_download  # noqa: F401
    import huggingface_hub.hf_api  # noqa: F401

    for encoding in ("windows-1250", "windows-1251", "windows-1252", "windows-1253", "windows-1254",
                     "windows-1257", "iso-8859-2", "latin-1", "sloppy-windows-1252", "utf-8-variants"):
        with contextlib.suppress(LookupError):
            codecs.lookup(encoding)


def _warnings_on_stderr(stage):
    """``stage`` with soup-exp's warnings on stderr, where the CLI's console shows them: in a
    child forked from pytest they would otherwise reach only pytest's log handlers."""
    def run():
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        logging.getLogger("soup_exp").addHandler(handler)
        return stage()

    return run


def test_write_protected_ingredients_are_souped_by_another_user(make_run, make_sd):
    with shared_dir() as root:
        out, status, err = _soup_as_another_user(root, make_run, make_sd)
        assert status == 0, err
        assert json.loads((out / "soups" / "uniform" / "soup.json").read_text())["ingredients"] == ["ft_0", "ft_1"]


@pytest.mark.parametrize("private", ["checkout", ".git"])
def test_another_user_soups_from_a_checkout_whose_git_metadata_is_private(make_run, make_sd, monkeypatch,
                                                                          private):
    """A colleague's clone (or one in a 0700 ``mktemp -d``): the commit is unknown, the soup is made."""
    import soup_exp
    from soup_exp.utils import runtime

    with shared_dir() as root:
        checkout = root / "checkout"
        for part in ("conf/__init__.py", "soup_exp/__init__.py", ".git/HEAD"):
            (checkout / part).parent.mkdir(parents=True, exist_ok=True)
            (checkout / part).write_text("")
        (checkout if private == "checkout" else checkout / private).chmod(0o700)
        monkeypatch.setattr(soup_exp, "__file__", str(checkout / "soup_exp" / "__init__.py"))
        monkeypatch.setattr(runtime, "_UNKNOWN_COMMIT_SAID", set())
        out, status, err = _soup_as_another_user(root, make_run, make_sd)
        assert status == 0, err
        record = json.loads((out / "soups" / "uniform" / "soup.json").read_text())
        assert record["code_version"] == f"{soup_exp.__version__}+unknown"
        assert err.count("code version recorded as unknown") == 1, err


def test_an_ingredient_another_user_cannot_read_is_named_as_a_permission_problem(make_run, make_sd):
    with shared_dir() as root:
        _, status, err = _soup_as_another_user(root, make_run, make_sd, unreadable=["ft_1"])
        assert status == 2
        assert "ft_1/model.safetensors: cannot be read (permission denied for user nobody" in err
        assert "No such file" not in err


def test_a_full_disk_stops_the_stage_naming_the_file(experiment, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(io.shutil, "disk_usage",  # the soups' disk is full; experiment.json fits
                        lambda path: usage(10**9, 0, 64 if "soups" in str(path) else 10**9))
    err = stage_error(_cfg(experiment), run_soups, capsys)
    assert f"cannot write {experiment}/soups/uniform/model.safetensors: No space left on device" in err
    assert "needed, 64 B free" in err


def test_temp_files_of_a_killed_soup_are_removed(experiment):
    leftover = experiment / "soups" / "uniform" / f".model.safetensors.999999999@{io._HOST}.abcdef.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a soup")
    run_soups(_cfg(experiment))
    assert not leftover.exists() and os.listdir(leftover.parent) == ["model.safetensors", "soup.json"]


def _soups(out) -> dict[str, tuple[dict, dict, dict]]:
    """Each soup's tensors (as lists), weights metadata and soup.json, paths made relative
    and the timestamp and cost dropped (what a run took varies: a resumed greedy soup scores
    fewer candidates)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    found = {}
    for record in sorted((out / "soups").glob("*/soup.json")):
        info = json.loads(record.read_text().replace(str(out), "<out>"))
        info.pop("created")
        info.pop("cost")
        weights = str(record.with_name("model.safetensors"))
        with safe_open(weights, "pt") as f:
            metadata = f.metadata()
        found[record.parent.name] = ({k: v.tolist() for k, v in load_file(weights).items()}, metadata, info)
    return found


def test_kill_9_at_any_commit_point_resumes_to_identical_soups(tmp_path, make_run, make_sd, monkeypatch):
    import shutil

    from soup_exp.soups.judge import Judge

    target = make_sd(99)["head.bias"]
    monkeypatch.setattr(Judge, "evaluate", lambda self, sd: -float((sd["head.bias"] - target).abs().sum()))
    monkeypatch.setattr(Judge, "candidate_buffer", lambda self: {})
    monkeypatch.setattr(Judge, "held_out_identity", "the-judge")
    pristine = tmp_path / "pristine"
    for i in range(3):
        make_run(pristine / "ingredients", f"ft_{i}", make_sd(i), held_out_accuracy=0.5 + i / 10,
                 held_out_precision="fp32", held_out_data="the-judge")

    def trial(name):
        out = tmp_path / name
        shutil.copytree(pristine, out)
        return out, _cfg(out, "recipes=[uniform,greedy]")

    out, cfg = trial("uninterrupted")
    commits = [0]
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (commits.__setitem__(0, commits[0] + 1), real(src, dst))[1])
    run_stage(cfg, run_soups)
    monkeypatch.setattr(os, "replace", real)
    expected = _soups(out)
    assert set(expected) == {"uniform", "greedy"} and commits[0] >= 8
    for n in range(1, commits[0] + 1):
        out, cfg = trial(f"killed_{n}")
        status, err = run_in_child(lambda: (kill_before_commit(n), run_stage(cfg, run_soups)))  # noqa: B023
        assert status == -signal.SIGKILL, err
        run_stage(cfg, run_soups)
        assert _soups(out) == expected, f"killed before commit {n}"
        assert not [p for p in out.rglob("*.tmp")], f"killed before commit {n}: temp files left"


def test_a_copied_experiments_ensembles_read_its_own_members(tmp_path, make_run, make_sd):
    out = tmp_path / "exp"
    for i in range(2):
        make_run(out / "ingredients", f"ft_{i}", make_sd(i), held_out_accuracy=0.5)
    make_run(out / "extra", "ft_9", make_sd(9), held_out_accuracy=0.4)  # pooled, not in ingredients_dir
    shared = make_run(tmp_path / "shared", "ft_8", make_sd(8), held_out_accuracy=0.4)  # outside the experiment
    made = run_soups(_cfg(out, f"soup.pool=[{out / 'ingredients'},{out / 'extra'},{shared}]"))
    record = json.loads((made["uniform"] / "soup.json").read_text())
    paths = dict(zip(record["ingredients"], record["ingredient_paths"], strict=True))
    assert paths == {"ft_0": "../../ingredients/ft_0/model.safetensors", "ft_1": "../../ingredients/ft_1/model.safetensors",
                     "ft_9": "../../extra/ft_9/model.safetensors", "ft_8": str(shared / "model.safetensors")}
    atomic_write_json(out / "soups" / "ensemble" / "soup.json",  # as the ensemble recipes record their members
                      {**record, "name": "ensemble", "recipe": "ensemble", "kind": "ensemble",
                       "members": record["ingredients"]})

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for original_deleted in (False, True):
        if original_deleted:
            shutil.rmtree(out)
        ensemble = next(e for e in discover_models(_cfg(copy)) if e.name == "ensemble")
        read = {p.parent.name: p for p in ensemble.members}
        assert set(read) == {"ft_0", "ft_1", "ft_9", "ft_8"}
        assert all(read[n].is_relative_to(copy) for n in ("ft_0", "ft_1", "ft_9")) and read["ft_8"].parent == shared


def test_a_link_to_a_folder_above_the_ingredients_is_not_followed(experiment, make_run, make_sd, caplog):
    make_run(experiment, "zeroshot", make_sd(7), kind="zeroshot")
    (experiment / "ingredients" / "loop").symlink_to("..", target_is_directory=True)
    (experiment / "ingredients" / "ft_1" / "up").symlink_to("../..", target_is_directory=True)
    caplog.set_level("WARNING")
    names = sorted(e.name for e in discover_models(_cfg(experiment)))
    assert names == ["ft_0", "ft_1", "zeroshot"]
    assert f"skipping {experiment / 'ingredients' / 'loop'}: it links to {experiment}" in caplog.text
    made = run_soups(_cfg(experiment))
    assert json.loads((made["uniform"] / "soup.json").read_text())["ingredients"] == ["ft_0", "ft_1"]
