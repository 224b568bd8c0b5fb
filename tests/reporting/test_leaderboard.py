"""The recipe leaderboard from a hand-written results.jsonl and soup directories."""

from __future__ import annotations

import csv
import io
import json

from soup_exp.artifacts.results import ResultsStore
from soup_exp.report import run_report
from soup_exp.tracking.offline_runs import read_offline_run

COST = {"wall_s": 12.5, "peak_host_bytes": 3_250_000_000, "peak_device_bytes": None, "held_out_passes": 9,
        "ingredient_reads": 10.0}
HEADER = ["method", "model", "ImageNet2p", "ImageNet", "avg_shifts", "wall_s", "peak_host_gb", "peak_device_gb",
          "held_out_passes", "ingredient_reads", "gain_imagenet", "gain_avg_shifts"]


SOUPS = {"greedy": COST, "uniform": {**COST, "wall_s": 0.25, "held_out_passes": 0, "ingredient_reads": 4.0,
                                     "peak_device_bytes": 1_500_000_000},
         "learned_by_layer": None}  # cooked by an older soup-exp: no cost


def _with_a_tie(rows):
    """Model Stock at uniform's accuracies: a tie on ImageNet."""
    uniform = next(r for r in rows if r["name"] == "uniform")
    return [*rows, {**uniform, "name": "model_stock", "recipe": "model_stock"}]


def _report(tmp_path, rows, soups, *overrides):
    from hydra import compose, initialize_config_dir

    from soup_exp.stages.entry import packaged_config_dir

    store = ResultsStore(tmp_path / "out" / "exp" / "results.jsonl")
    for row in rows:
        store.upsert(row)
    for name, cost in soups.items():
        folder = tmp_path / "out" / "exp" / "soups" / name
        folder.mkdir(parents=True)
        record = {"name": name, "recipe": name, "kind": "soup", **({"cost": cost} if cost else {})}
        (folder / "soup.json").write_text(json.dumps(record))
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        cfg = compose(config_name="report", overrides=[f"paths.output_dir={tmp_path / 'out'}", "name=exp",
                                                       "logger.project=soup-test", *overrides])
    return run_report(cfg)


def test_every_cooked_recipe_with_its_cost_and_gain_best_imagenet_first(tmp_path, our_rows):
    outputs = _report(tmp_path, _with_a_tie(our_rows), SOUPS)
    rows = list(csv.reader(io.StringIO(outputs["leaderboard.csv"].read_text())))
    assert rows[0] == HEADER
    by_model = {row[1]: dict(zip(HEADER, row, strict=True)) for row in rows[1:]}
    # ImageNet descending, the tie (model_stock, uniform: 80.00) by name; no baseline rows
    assert [row[1] for row in rows[1:]] == ["learned_by_layer", "greedy", "ensemble", "model_stock", "uniform",
                                            "wise_ft_0.5", "wise_ft_0.3"]
    greedy = by_model["greedy"]
    assert (greedy["ImageNet2p"], greedy["ImageNet"], greedy["avg_shifts"]) == ("83.00", "82.00", "79.00")
    assert (greedy["wall_s"], greedy["peak_host_gb"], greedy["peak_device_gb"]) == ("12.50", "3.25", "")
    assert (greedy["held_out_passes"], greedy["ingredient_reads"]) == ("9", "10.00")
    # the best individual is ft_2 (best on held-out: 79.00 ImageNet), not ft_1 (best on ImageNet)
    assert (greedy["gain_imagenet"], greedy["gain_avg_shifts"]) == ("+3.00", "+3.00")
    assert by_model["wise_ft_0.3"]["gain_imagenet"] == "-2.00"
    assert by_model["uniform"]["peak_device_gb"] == "1.50" and by_model["uniform"]["held_out_passes"] == "0"
    costs = HEADER[5:10]
    for older in ("learned_by_layer", "ensemble"):  # no cost recorded, no soup directory: blank cells
        assert [by_model[older][key] for key in costs] == [""] * 5
        assert by_model[older]["ImageNet"] and by_model[older]["gain_imagenet"]

    md = outputs["leaderboard.md"].read_text().split("\n\n")[0].splitlines()
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in md]
    assert cells[0] == ["Method", "Held-out", "ImageNet", "Avg shifts", "Wall (s)", "Peak host (GB)",
                        "Peak device (GB)", "Held-out passes", "Ingredient reads", "Gain ImageNet (pts)",
                        "Gain Avg shifts (pts)"]
    assert all(len(line) == len(cells[0]) for line in cells) and len(cells) == 2 + 7
    older = next(line for line in cells if line[0] == "Learned soup, by layer")
    assert older[4:9] == ["–"] * 5
    tex = outputs["leaderboard.tex"].read_text().splitlines()
    assert tex[1] == "\\begin{tabular}{l" + "r" * 10 + "}" and tex[-1] == "\\end{tabular}"
    body = [line for line in tex if line.endswith(" \\\\")]
    assert len(body) == 1 + 7 and all(line.count(" & ") == 10 for line in body)
    assert "Gain ImageNet (pts)" in body[0] and "Greedy soup" in body[2]

    (run_dir,) = (tmp_path / "out" / "exp" / "wandb").glob("offline-run-*")
    tables = {p.name.split("_")[0] for p in (run_dir / "files" / "media" / "table").rglob("*.table.json")}
    assert "leaderboard" in tables
    logged = next((run_dir / "files" / "media" / "table").rglob("leaderboard*.table.json"))
    data = json.loads(logged.read_text())
    assert data["columns"] == HEADER and data["data"][1][1] == "greedy" and data["data"][1][5] == 12.5
    assert read_offline_run(run_dir).job_type == "report"


def test_without_recipe_rows_there_is_no_leaderboard(tmp_path, our_rows):
    outputs = _report(tmp_path, [r for r in our_rows if r["kind"] in {"zeroshot", "lp", "finetune"}], {},
                      "logger=disabled")
    assert "table.md" in outputs and not any(name.startswith("leaderboard") for name in outputs)
