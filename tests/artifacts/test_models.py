"""The one reader of an experiment's model directories: typed records for runs, ensembles
and soups, with the member rules and errors every stage relies on."""

import json

import pytest
import torch

from soup_exp.artifacts import (
    ArtifactError,
    Ensemble,
    SoupCost,
    SoupRecord,
    WeightsModel,
    read_models,
    soup_records,
    write_run,
    write_soup_dir,
)


def _run(folder, name, kind=None, **extra):
    record = {"name": name, **({"kind": kind} if kind else {}), **extra}
    return write_run(folder, {"w": torch.full((2,), float(len(name)))}, record)


@pytest.fixture
def experiment(tmp_path):
    _run(tmp_path / "zeroshot", "zeroshot", "zeroshot")
    for i in (0, 1, 10, 2):
        _run(tmp_path / "ingredients" / f"ft_{i}", f"ft_{i}", held_out_accuracy=0.5 + i / 100)
    return tmp_path


def _read(root):
    return read_models(root / "zeroshot", root / "ingredients", root / "soups")


def test_runs_are_weights_models_in_natural_order_with_their_checked_record(experiment):
    models = _read(experiment)
    assert [m.name for m in models] == ["zeroshot", "ft_0", "ft_1", "ft_2", "ft_10"]
    assert all(isinstance(m, WeightsModel) and m.soup is None for m in models)
    zeroshot, ft_2 = models[0], models[3]
    assert (zeroshot.kind, ft_2.kind) == ("zeroshot", "finetune")  # kinds default by folder
    assert ft_2.directory == experiment / "ingredients" / "ft_2"
    assert ft_2.weights == ft_2.directory / "model.safetensors" and ft_2.files == (ft_2.weights,)
    assert ft_2.record["held_out_accuracy"] == 0.52


def test_the_pool_is_read_as_the_soup_stage_reads_soup_pool(experiment, tmp_path_factory):
    """Evaluate reads the runs of ``soup.pool`` (paths, globs, lists), so every stage sees
    the same ingredients; the zero-shot model is read once even when the pool holds it."""
    shared = tmp_path_factory.mktemp("shared_pool")
    for i in (3, 11):
        _run(shared / "sweep" / f"run_{i}", f"run_{i}")
    _run(shared / "single", "single")
    pool = [str(shared / "sweep" / "run_*"), str(shared / "single"), str(experiment)]
    models = read_models(experiment / "zeroshot", pool, experiment / "soups")
    assert [m.name for m in models] == ["zeroshot", "run_3", "run_11", "single", "ft_0", "ft_1", "ft_2", "ft_10"]
    assert [m.name for m in read_models(experiment / "zeroshot", str(experiment / "missing"), experiment / "soups")] \
        == ["zeroshot"]


def test_an_ensemble_resolves_members_by_name_index_recorded_path_and_path(experiment, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("other")
    _run(elsewhere / "run_a", "run_a")
    _run(elsewhere / "run_b", "run_b")
    soups = experiment / "soups"
    write_soup_dir(soups / "ens", {"name": "ens", "kind": "ensemble",
                                   "members": ["ft_1", 1, "run_b", str(elsewhere / "run_b" / "model.safetensors")],
                                   "ingredients": ["ft_0", "run_a", "run_b"],
                                   "ingredient_paths": [None, str(elsewhere / "run_a"), "../../../other0/run_b"]})
    ens = {m.name: m for m in _read(experiment)}["ens"]
    assert isinstance(ens, Ensemble) and ens.kind == "ensemble" and ens.soup.is_ensemble
    assert ens.members == (experiment / "ingredients" / "ft_1" / "model.safetensors",
                           elsewhere / "run_a" / "model.safetensors",
                           soups / "ens" / "../../../other0/run_b" / "model.safetensors",
                           elsewhere / "run_b" / "model.safetensors")
    assert ens.files == ens.members and ens.record["members"][1] == 1


def test_an_unknown_member_names_the_soup_file_and_the_known_models(experiment):
    write_soup_dir(experiment / "soups" / "bad", {"name": "bad", "members": ["ft_9"]})
    with pytest.raises(ArtifactError, match=r"bad/soup.json: ensemble member 'ft_9' is neither a known "
                                            r"ingredient \(ft_0, ft_1, ft_10, ft_2, zeroshot\)"):
        _read(experiment)


def test_a_soup_record_holds_its_fields_typed_and_the_rest_as_extra(experiment):
    record = {"name": "greedy", "recipe": "greedy", "kind": "soup", "label": "Greedy soup",
              "ingredients": ["ft_1", "ft_0"], "ingredient_paths": ["../../ingredients/ft_1", None],
              "num_ingredients": 2, "params": {"tolerance": 0.0}, "coefficients": [0.5, 0.5],
              "history": [{"name": "ft_1", "held_out": 0.6, "accepted": True}],
              "held_out_accuracy": 0.61, "pool": ["ft_1", "ft_0"], "created": "today"}
    write_soup_dir(experiment / "soups" / "greedy", record, {"w": torch.zeros(2)})
    model = _read(experiment)[-1]
    assert isinstance(model, WeightsModel) and model.kind == "soup"
    soup = model.soup
    assert (soup.name, soup.recipe, soup.label, soup.held_out_accuracy) == ("greedy", "greedy", "Greedy soup", 0.61)
    assert soup.ingredients == ("ft_1", "ft_0") and soup.coefficients == [0.5, 0.5]
    assert soup.history == ({"name": "ft_1", "held_out": 0.6, "accepted": True},)
    assert soup.params == {"tolerance": 0.0} and soup.members is None and not soup.is_ensemble
    assert soup.extra == {"pool": ["ft_1", "ft_0"], "created": "today"}
    assert not soup.is_learned and soup.alpha is None
    assert soup.recorded_paths() == {"ft_1": experiment / "soups" / "greedy" / "../../ingredients/ft_1"}
    assert list(soup.json) == list(record)  # the object as written, key order kept
    assert json.loads((experiment / "soups" / "greedy" / "soup.json").read_text()) == soup.json


def test_learned_soups_and_wise_ft_are_properties_of_the_record(tmp_path):
    learned = SoupRecord.of({"name": "l", "coefficients": [0.3, 0.7], "beta": 1.1}, tmp_path)
    no_beta = SoupRecord.of({"name": "u", "coefficients": [0.5, 0.5]}, tmp_path)
    wise = SoupRecord.of({"name": "w", "alpha": 0.5, "interpolated": "ft_0"}, tmp_path)
    assert learned.is_learned and not no_beta.is_learned
    assert (wise.alpha, wise.interpolated, wise.display_label) == (0.5, "ft_0", "w")


def test_two_models_of_one_name_are_an_error_naming_both_paths(experiment):
    _run(experiment / "ingredients" / "copy", "ft_1")
    with pytest.raises(ArtifactError, match="two models are named 'ft_1': .*/copy and .*/ft_1; result rows are keyed"):
        _read(experiment)


def test_a_soup_without_its_weights_is_a_damaged_directory(experiment):
    write_soup_dir(experiment / "soups" / "uniform", {"name": "uniform"})
    with pytest.raises(ArtifactError, match=r"uniform/soup.json exists but .*model.safetensors does not: "
                                            "the directory is damaged"):
        _read(experiment)
    assert [s.name for s in soup_records(experiment / "soups")] == ["uniform"]  # the record alone still reads


def test_a_soups_cost_is_a_typed_field_and_an_older_soup_has_none(tmp_path):
    cost = {"wall_s": 1.5, "peak_host_bytes": 10, "peak_device_bytes": None, "held_out_passes": 3,
            "ingredient_reads": 4.0}
    record = SoupRecord.of({"name": "u", "cost": cost}, tmp_path)
    assert record.cost == SoupCost(1.5, 10, None, 3, 4.0) and record.cost.as_json() == cost
    assert "cost" not in record.extra
    assert SoupRecord.of({"name": "old"}, tmp_path).cost is None


def test_a_cost_that_is_not_numbers_names_the_soup_file(experiment):
    write_soup_dir(experiment / "soups" / "bad", {"name": "bad", "cost": {"wall_s": "long"}}, {"w": torch.zeros(2)})
    with pytest.raises(ArtifactError, match=r"bad/soup.json: cost must be an object of name -> number"):
        _read(experiment)
