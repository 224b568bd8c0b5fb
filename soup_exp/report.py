"""`soup-exp report`: results files in; table (md/tex/csv), figures (png/pdf) and a W&B
run out. Also reads the authors' published files, so their table can be rebuilt, and
lists the figures `soup-exp analyze` left in ``analysis_dir``.
The table and figure code lives in :mod:`soup_exp.reporting`."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from soup_exp.artifacts import SOUP_FILE, SoupRecord, soup_records
from soup_exp.artifacts.analysis import analysis_records
from soup_exp.artifacts.correctness import correctness_path, matching_hits, read_hits
from soup_exp.artifacts.results import ResultsFormatError, results_files
from soup_exp.reporting import across
from soup_exp.reporting.leaderboard import build_leaderboard
from soup_exp.reporting.paper import (
    PUBLISHED,
    comparison_table,
    is_published_name,
    published_rows,
    reference_rows,
    results_rows,
)
from soup_exp.reporting.reproduction import reproduction_table
from soup_exp.reporting.table import Table, build_table, check_formats, render, to_markdown
from soup_exp.reporting.uncertainty import PairedBootstrap
from soup_exp.stages.entry import stage_entry
from soup_exp.tracking.repeats import log_once
from soup_exp.utils.config import to_plain
from soup_exp.utils.io import atomic_write_text, remove_stale_temp_files

log = logging.getLogger(__name__)


def check_report(cfg: DictConfig, overrides: Sequence[str] = ()) -> bool:
    """Formats, results and the comparison set, before anything is created (a report
    across experiments, ``name='demo-seed*'``, runs here: True)."""
    if across.is_across(cfg):
        return across.check_across(cfg)
    _formats(cfg)
    _result_rows(cfg)
    compare = cfg["compare"]
    if compare:
        reference_rows(str(compare))
    return False


def plan_report(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """A dry run's lines: which results are read, what they are compared with, where the report goes."""
    from soup_exp.stages.preflight import logger_line

    if across.is_across(cfg):
        return across.plan_across(cfg)
    results = to_plain(cfg["results"])
    entries = [results] if isinstance(results, str) else list(results or [])
    lines = [f"results: {e} (the published files shipped with soup-exp)" if e in PUBLISHED
             else f"results: {e}" + ("" if Path(str(e)).exists() else " (not written yet)") for e in entries]
    compare = cfg["compare"]
    if compare:
        lines.append(f"compare with: {compare}")
    report_dir = Path(str(cfg["report_dir"]))
    kinds = ",".join(_formats(cfg))
    outputs = [f"report: {report_dir} (table.{{{kinds}}}, leaderboard.{{{kinds}}}, figures/)", logger_line(cfg)]
    return {"report": lines, "outputs": outputs}


def _result_rows(cfg: DictConfig | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``cfg.results``; when it is this experiment's own file and there is none
    yet, the error lists the experiments under the output root that have one (a report
    run without ``experiment=`` looks in ``outputs/default``)."""
    try:
        return results_rows(to_plain(cfg["results"]))
    except ResultsFormatError as err:
        hint = _other_results_hint(cfg)
        if not hint:
            raise
        raise ResultsFormatError(f"{err}; {hint}") from err


def _other_results_hint(cfg: DictConfig | Mapping[str, Any], shown: int = 5) -> str:
    from soup_exp.stages.entry import packaged_config_dir

    own, root = cfg.get("results_file"), (cfg.get("paths") or {}).get("output_dir")
    if not own or not root or str(cfg.get("results")) != str(own) or Path(str(own)).exists():
        return ""
    found = sorted(Path(str(root)).expanduser().glob(f"*/{Path(str(own)).name}"))
    if not found:
        return ""
    experiments = packaged_config_dir() / "experiment"
    choices = [f"{p.parent.name} (add {'experiment' if (experiments / f'{p.parent.name}.yaml').is_file() else 'name'}"
               f"={p.parent.name})" for p in found[:shown]]
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return (f"experiments under {root} with results: {', '.join(choices)}{more}; "
            "or give results=PATH (a results.jsonl or a folder of them)")


def _bootstrap(cfg: DictConfig | Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> PairedBootstrap | None:
    """The paired bootstrap of the rows whose per-image hits the evaluate stage kept beside
    their results file (and that still match the row); None with ``uncertainty.replicates=0``
    or when no row has any (the authors' published numbers)."""
    settings = cfg["uncertainty"]
    if not int(settings["replicates"]):
        return None
    results = to_plain(cfg["results"])
    entries = [results] if isinstance(results, str | os.PathLike) else list(results or [])
    kept: dict[str, dict[str, Any]] = {}
    for path in results_files([e for e in entries if not is_published_name(e)]):
        kept.update(read_hits(correctness_path(path)))
    hits, identities = {}, {}
    for row in rows:
        matched = matching_hits(row, kept.get(str(row["name"]), {}))
        if matched:
            hits[str(row["name"])] = matched
            identities[str(row["name"])] = dict((row.get("meta") or {}).get("datasets") or {})
    if not hits:
        log.info("no per-image hits beside %s: the table has no intervals", results)
        return None
    return PairedBootstrap(hits, replicates=int(settings["replicates"]), seed=int(settings["seed"]),
                           level=float(settings["level"]), identities=identities)


def _formats(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    return check_formats(list(cfg["formats"]))


def run_report(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Path]:
    """Write the table, the comparison (with ``compare``), the recipe leaderboard (when
    there are recipe rows) and the figures to ``cfg.report_dir``; log them to W&B; print
    the Markdown tables. Returns
    ``{artefact name: path}`` (e.g. ``table.md``, ``figure1.png``). A pattern for ``name``
    (``demo-seed*``) reports across the matching experiments (:mod:`soup_exp.reporting.across`)."""
    if across.is_across(cfg):
        return across.run_across(cfg)
    report_dir = Path(str(cfg["report_dir"])).expanduser()
    formats = _formats(cfg)
    per_recipe = str(cfg["per_recipe"])
    remove_stale_temp_files(report_dir)

    rows = _result_rows(cfg)
    soups = _read_soups(cfg["soups_dir"])
    rows = _with_ingredient_counts(rows, soups)
    bootstrap = _bootstrap(cfg, rows)
    table = build_table(rows, per_recipe=per_recipe, bootstrap=bootstrap)
    if not table.rows:
        warnings.warn("no result row matches a table line (zero-shot, individual, soup, ...)", stacklevel=2)

    outputs: dict[str, Path] = {}
    outputs.update(_write_table(table, report_dir / "table", formats))
    compare = cfg["compare"]
    comparison = comparison_table(table, str(compare), per_recipe=per_recipe, our_rows=rows) if compare else None
    if comparison is not None:
        outputs.update(_write_table(comparison, report_dir / "comparison", formats))
    reproduction = reproduction_table(rows, published_rows("paper_vitb32"))
    if reproduction is not None:
        outputs.update(_write_table(reproduction, report_dir / "reproduction", formats))
        print(to_markdown(reproduction))
    leaderboard = build_leaderboard(rows, soups, table.row("best_individual"), bootstrap)
    if leaderboard.rows:
        outputs.update(_write_table(leaderboard, report_dir / "leaderboard", formats))
    outputs.update(_write_figures(rows, soups, report_dir / "figures"))
    outputs.update(analysis_outputs(cfg.get("analysis_dir"), report_dir))

    named = {"results_table": table, "comparison_table": comparison,
             "leaderboard": leaderboard if leaderboard.rows else None}
    _log_to_wandb(cfg, table, named, outputs, len(rows), report_dir)
    for shown in (table, comparison, named["leaderboard"]):
        if shown is not None:
            print(to_markdown(shown))
    print(f"report written to {report_dir.resolve()}:")
    for key, path in outputs.items():
        print(f"  {key}: {path}")
    return outputs


def _write_table(table: Table, base: Path, formats: list[str]) -> dict[str, Path]:
    written = {}
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        atomic_write_text(path, render(table, fmt))
        written[path.name] = path
    return written


def _write_figures(rows: list[dict[str, Any]], soups: list[SoupRecord], out_dir: Path) -> dict[str, Path]:
    from soup_exp.reporting.figures import (  # matplotlib: not needed by a plan
        SoupFileError,
        plot_figure1,
        plot_greedy_trajectory,
        plot_learned_coefficients,
    )

    paths = list(plot_figure1(rows, out_dir / "figure1"))
    for soup in soups:
        name = _safe_name(str(soup.name or soup.recipe))
        try:
            if soup.history:
                paths += plot_greedy_trajectory(soup, out_dir / f"greedy_trajectory_{name}")
            if soup.is_learned:
                paths += plot_learned_coefficients(soup, out_dir / f"coefficients_{name}")
        except SoupFileError as err:
            warnings.warn(f"{soup.directory / SOUP_FILE}: {err}; figure skipped", stacklevel=2)
    return {path.name: path for path in paths}


def analysis_outputs(analysis_dir: Any, report_dir: Path) -> dict[str, Path]:
    """The figures and tables `soup-exp analyze` wrote, listed (not recomputed), and
    ``analyses.md``, which shows each analysis's figures and headline numbers."""
    outputs: dict[str, Path] = {}
    records = analysis_records(Path(str(analysis_dir)).expanduser()) if analysis_dir else []
    for record in records:
        folder = Path(record["_dir"])
        for name in record.get("outputs") or []:
            if (folder / name).is_file():
                outputs[f"analysis/{folder.name}/{name}"] = folder / name
    if records:
        index = report_dir / "analyses.md"
        atomic_write_text(index, analysis_index(records, report_dir))
        outputs[index.name] = index
    return outputs


def analysis_index(records: Sequence[Mapping[str, Any]], report_dir: Path) -> str:
    """Markdown: per analysis, its label, its top-level numbers, its figures (links relative
    to the report folder) and the CSV of each."""
    lines = ["# Analyses", ""]
    for record in records:
        folder = Path(record["_dir"])
        where = os.path.relpath(folder, report_dir)
        lines += [f"## {record.get('label') or folder.name}", ""]
        numbers = {k: v for k, v in (record.get("numbers") or {}).items()
                   if isinstance(v, str | int | float) and not isinstance(v, bool)}
        if numbers:
            lines += [", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in numbers.items()),
                      ""]
        for name in record.get("outputs") or []:
            if name.endswith(".png"):
                stem = name[: -len(".png")]
                lines += [f"![{stem}]({where}/{name})", f"[data]({where}/{stem}.csv) · [pdf]({where}/{stem}.pdf)", ""]
    return "\n".join(lines)


def _read_soups(soups_dir: Any) -> list[SoupRecord]:
    """Every ``soup.json`` under ``soups_dir`` (one per recipe directory), if it exists."""
    if not soups_dir:
        return []
    root = Path(str(soups_dir)).expanduser()
    if not root.is_dir():
        log.info("no soups directory at %s: greedy/learned figures skipped", root)
        return []
    return soup_records(root)


def _with_ingredient_counts(rows: list[dict[str, Any]], soups: list[SoupRecord]) -> list[dict[str, Any]]:
    """Fill ``num_ingredients`` from the matching soup.json when the result row lacks it."""
    counts = {}
    for soup in soups:
        members = soup.ingredients or soup.members
        if soup.name and isinstance(members, tuple):
            counts[soup.name] = len(members)
    return [
        {**r, "num_ingredients": counts[r["name"]]} if r.get("num_ingredients") is None and r["name"] in counts else r
        for r in rows
    ]


def _log_to_wandb(
    cfg: Any, table: Table, named: Mapping[str, Table | None], outputs: dict[str, Path], num_rows: int,
    report_dir: Path
) -> None:
    """Tables (``named``: W&B key -> table, None for one not made), figures and numbers
    (``table``'s) to the report's W&B run; none when its last run logged the same."""
    tables = {key: (["method", "model", *(k for k, _ in tab.columns)], _table_data(tab))
              for key, tab in named.items() if tab is not None}
    images = {f"figures/{Path(key).with_suffix('')}": path for key, path in outputs.items() if path.suffix == ".png"}
    summary = {f"{row.slot}/{key}": value for row in table.rows for key, value in row.values.items()
               if value is not None}
    summary["num_results"] = num_rows
    log_once(cfg, report_dir, stage="report", name=f"report-{cfg['name']}", tables=tables, summary=summary,
             images=images)


def _table_data(table: Table) -> list[list[Any]]:
    return [
        [row.label, row.model, *(float(c) if (c := table.cell(row, key)) else None for key, _ in table.columns)]
        for row in table.rows
    ]


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


main = stage_entry("report")

if __name__ == "__main__":
    main()
