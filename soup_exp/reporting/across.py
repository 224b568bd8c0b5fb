"""The report across experiments: ``soup-exp report name='demo-seed*'``.

A claim read off one sweep seed can be noise: on the demo, the greedy soup beats the best
individual on ImageNet in three seeds of five. Each matching experiment's table is built
as the single report builds it (:func:`soup_exp.reporting.table.build_table`); across
them, every table line's accuracies and every claim the summary prints (the ``FINDINGS``
pairs on held-out, ImageNet and Avg shifts) get their mean, sample standard deviation,
range, the number of experiments and each experiment's sign, written as tables and
logged to one W&B run.

The pattern matches folder names directly under the output root (``fnmatch``, case
sensitive), never a path, so it cannot reach outside it.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import os
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soup_exp.artifacts.results import read_results
from soup_exp.errors import ConfigError
from soup_exp.reporting.table import (
    FINDINGS,
    RENDERERS,
    Table,
    TableRow,
    build_table,
    check_formats,
    latex_escape,
    md_line,
)
from soup_exp.stages.experiment import MARKER, is_name_pattern
from soup_exp.tracking.repeats import log_once
from soup_exp.utils.config import config_get
from soup_exp.utils.io import atomic_write_text, remove_stale_temp_files
from soup_exp.utils.text import plural
from soup_exp.vocabulary import AVG_SHIFTS, HELD_OUT, IMAGENET, LABELS

ACROSS_DIR = "across"  # <output root>/across/<pattern>/: where an across report goes by default
TABLE_FILE, CLAIMS_FILE = "across_table", "across_claims"
CLAIM_METRICS = ((HELD_OUT, "held-out"), (IMAGENET, LABELS[IMAGENET]), (AVG_SHIFTS, LABELS[AVG_SHIFTS]))
MINUS = "\u2212"
ZERO_POINTS = 1e-9  # a difference this small is a tie: the same number of images right


# --- numbers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """One number in each experiment that has it (``values``: experiment -> percent or points)."""

    values: Mapping[str, float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def std(self) -> float | None:
        """The sample standard deviation; None for a single experiment."""
        return statistics.stdev(self.values.values()) if self.n > 1 else None

    @property
    def low(self) -> float:
        return min(self.values.values())

    @property
    def high(self) -> float:
        return max(self.values.values())

    def signs(self) -> str:
        """Each experiment's sign, in the experiments' order: ``+ + − 0``."""
        return " ".join(sign(v) for v in self.values.values())


def sign(value: float) -> str:
    return "0" if abs(value) < ZERO_POINTS else "+" if value > 0 else MINUS


@dataclass(frozen=True)
class AcrossLine:
    """One table line over the experiments: its accuracies (percent) per column key."""

    key: str
    label: str
    cells: Mapping[str, Spread]

    @property
    def n(self) -> int:
        return max((s.n for s in self.cells.values()), default=0)


@dataclass(frozen=True)
class AcrossClaim:
    """A summary claim (``compared`` vs ``base`` on ``metric``): its gain in points per experiment."""

    base: str
    compared: str
    label: str
    metric: str
    metric_label: str
    gain: Spread

    def sentence(self) -> str:
        """``Greedy soup vs Best individual on held-out, ImageNet: +0.93 ± 1.10 (5 runs; + + + − −)``."""
        spread = f" ± {self.gain.std:.2f}" if self.gain.std is not None else ""
        return (f"{self.label}, {self.metric_label}: {signed(self.gain.mean)}{spread} "
                f"({plural(self.gain.n, 'run')}; {self.gain.signs()})")


@dataclass(frozen=True)
class Across:
    experiments: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    lines: tuple[AcrossLine, ...]
    claims: tuple[AcrossClaim, ...]

    def claim(self, base: str, compared: str, metric: str) -> AcrossClaim | None:
        return next((c for c in self.claims if (c.base, c.compared, c.metric) == (base, compared, metric)), None)

    def line(self, key: str) -> AcrossLine | None:
        return next((line for line in self.lines if line.key == key), None)


def signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", MINUS)


def build_across(tables: Mapping[str, Table]) -> Across:
    """Lines and claims over ``tables`` (experiment name -> its table, in the order shown)."""
    keyed = {name: keyed_rows(table) for name, table in tables.items()}
    columns = tuple(dict.fromkeys(col for table in tables.values() for col in table.columns))
    labels: dict[str, str] = {}
    for rows in keyed.values():
        for key, (label, _) in rows.items():
            labels.setdefault(key, label)
    lines = tuple(AcrossLine(key, label, {col: Spread(_percents(keyed, key, col)) for col, _ in columns})
                  for key, label in labels.items())
    return Across(tuple(tables), columns, lines, tuple(_claims(tables, labels)))


def keyed_rows(table: Table) -> dict[str, tuple[str, TableRow]]:
    """The table's lines by a key that is the same in every experiment: the slot, whose label
    loses what differs between seeds (``Greedy soup (4 models)``, ``Best individual on
    held-out (ft_003)``); the full label where a slot has several lines (``per_recipe=all``)."""
    repeated = Counter(row.slot for row in table.rows)
    return {(row.slot if repeated[row.slot] == 1 else row.label):
            (plain_label(row.label) if repeated[row.slot] == 1 else row.label, row) for row in table.rows}


def plain_label(label: str) -> str:
    return re.sub(r" \([^()]*\)$", "", label)


def _percents(keyed: Mapping[str, Mapping[str, tuple[str, TableRow]]], key: str, column: str) -> dict[str, float]:
    values = {}
    for name, rows in keyed.items():
        if key in rows and (value := rows[key][1].values.get(column)) is not None:
            values[name] = value if rows[key][1].delta else 100 * value
    return values


def _claims(tables: Mapping[str, Table], labels: Mapping[str, str]) -> list[AcrossClaim]:
    """The summary's claims (as :func:`soup_exp.reporting.table.findings` picks them), in points."""
    claims = []
    for base, compared in FINDINGS:
        for metric, metric_label in CLAIM_METRICS:
            gains = {}
            for name, table in tables.items():
                a, b = table.row(base), table.row(compared)
                if a is not None and b is not None and a.values.get(metric) is not None \
                        and b.values.get(metric) is not None:
                    gains[name] = 100 * (b.values[metric] - a.values[metric])
            if gains:
                label = f"{labels.get(compared, compared)} vs {labels.get(base, base)}"
                claims.append(AcrossClaim(base, compared, label, metric, metric_label, Spread(gains)))
    return claims


# --- finding the experiments ---------------------------------------------------------------------


def experiment_names(root: Path, results_name: str = "results.jsonl") -> list[str]:
    """Folders directly under ``root`` that are experiments: with results or a stage's marker."""
    if not root.is_dir():
        return []
    with os.scandir(root) as entries:
        found = [e.name for e in entries if e.is_dir() and
                 ((Path(e.path) / results_name).is_file() or (Path(e.path) / MARKER).is_file())]
    return sorted(found, key=natural_key)


def natural_key(name: str) -> list[Any]:
    """``demo-seed2`` before ``demo-seed10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_experiments(root: Path, pattern: str, results_name: str = "results.jsonl") -> tuple[list[str], list[str]]:
    """``(with results, without)``: the experiments under ``root`` whose name matches
    ``pattern``; an error naming the experiments there when none matches or none has results."""
    names = experiment_names(root, results_name)
    matched = [n for n in names if fnmatch.fnmatchcase(n, pattern) and (pattern.startswith(".") or n[0] != ".")]
    if not matched:
        there = f"experiments there: {', '.join(names)}" if names else "it holds no experiment"
        raise ConfigError(f"name={pattern!r} matches no experiment under {root}; {there}")
    found = [n for n in matched if (root / n / results_name).is_file()]
    if not found:
        raise ConfigError(f"name={pattern!r}: none of the matching experiments under {root} has a "
                          f"{results_name} yet ({', '.join(matched)}); run `soup-exp evaluate` for them first")
    return found, [n for n in matched if n not in found]


def across_dir(root: Path, pattern: str) -> Path:
    """``<root>/across/<pattern>``, the pattern's glob characters as ``_``; refused when
    ``<root>/across`` is itself an experiment's folder (an experiment named ``across``)."""
    base = root / ACROSS_DIR
    if (base / MARKER).is_file():
        raise ConfigError(f"{base} is an experiment's output folder; give the across report its own "
                          "folder with report_dir=...")
    return base / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in pattern)


# --- writing -------------------------------------------------------------------------------------


FORMATS = tuple(RENDERERS)


def report_across(results: Mapping[str, Path], report_dir: Path, formats: Sequence[str] = FORMATS,
                  per_recipe: str = "best") -> tuple[Across, dict[str, Path]]:
    """The Python API of the across report: each experiment's ``results.jsonl`` (experiment
    name -> path, in the order shown) in; the across tables in ``formats`` written to
    ``report_dir`` out."""
    check_formats(formats)
    tables = {name: build_table(read_results(path), per_recipe=per_recipe) for name, path in results.items()}
    across = build_across(tables)
    return across, write_across(across, report_dir, formats)


def write_across(across: Across, report_dir: Path, formats: Sequence[str]) -> dict[str, Path]:
    remove_stale_temp_files(report_dir)
    written = {}
    for base, render in ((TABLE_FILE, render_lines), (CLAIMS_FILE, render_claims)):
        for fmt in formats:
            path = report_dir / f"{base}.{fmt}"
            atomic_write_text(path, render(across, fmt))
            written[path.name] = path
    return written


def summary(across: Across) -> str:
    """What the report prints: the accuracy table and one line per claim."""
    return render_lines(across, "md") + "\n" + "\n".join(f"- {c.sentence()}" for c in across.claims) + "\n"


def line_records(across: Across) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)``: per table line and column with a value, its count, mean, sample
    standard deviation (None for one experiment), min, max and each experiment's value."""
    header = ["method", "metric", "n", "mean", "std", "min", "max", *across.experiments]
    rows = [[line.label, key, spread.n, *_numbers(spread), *_each(spread, across.experiments)]
            for line in across.lines for key, _ in across.columns if (spread := line.cells[key]).n]
    return header, rows


def claim_records(across: Across) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)``: per claim, its gain in points as :func:`line_records` gives an accuracy,
    and the experiments' signs (ASCII ``-``)."""
    header = ["claim", "metric", "n", "mean", "std", "min", "max", "signs", *across.experiments]
    rows = [[c.label, c.metric, c.gain.n, *_numbers(c.gain), _ascii(c.gain.signs()), *_each(c.gain, across.experiments)]
            for c in across.claims]
    return header, rows


def render_lines(across: Across, fmt: str) -> str:
    """Each table line's mean ± standard deviation in the table; the CSV has
    :func:`line_records`."""
    if fmt == "csv":
        return _csv(*line_records(across))
    caption = (f"Top-1 accuracy (%), mean ± standard deviation over {plural(len(across.experiments), 'experiment')} "
               f"({', '.join(across.experiments)})")
    header = ["Method", *(label for _, label in across.columns)]
    rows = [[_line_label(line, len(across.experiments)), *(_mean_std(line.cells[key]) for key, _ in across.columns)]
            for line in across.lines]
    return _text(fmt, caption, header, rows)


def render_claims(across: Across, fmt: str) -> str:
    """Each claim's gain in points: mean ± standard deviation, range, runs and signs; the CSV
    has :func:`claim_records`."""
    if fmt == "csv":
        return _csv(*claim_records(across))
    caption = (f"Gains in points over {plural(len(across.experiments), 'experiment')}; "
               f"signs in the order {', '.join(across.experiments)}")
    header = ["Claim", "On", "Mean ± sd", "Min", "Max", "Runs", "Signs"]
    rows = [[c.label, c.metric_label, _mean_std(c.gain, signed_mean=True), signed(c.gain.low), signed(c.gain.high),
             str(c.gain.n), c.gain.signs()] for c in across.claims]
    return _text(fmt, caption, header, rows)


def wandb_summary(across: Across) -> dict[str, Any]:
    """The run's numbers: ``<line>/<column>`` and ``claims/<compared>_vs_<base>/<column>``
    (means, percent and points), each with its ``_std`` where there are two experiments or more."""
    summary: dict[str, Any] = {"num_experiments": len(across.experiments), "experiments": list(across.experiments)}
    spreads = [(f"{line.key}/{key}", line.cells[key]) for line in across.lines for key, _ in across.columns]
    spreads += [(f"claims/{c.compared}_vs_{c.base}/{c.metric}", c.gain) for c in across.claims]
    for key, spread in spreads:
        if spread.n:
            summary[key] = spread.mean
            if spread.std is not None:
                summary[f"{key}_std"] = spread.std
    return summary


def _line_label(line: AcrossLine, total: int) -> str:
    return line.label if line.n == total else f"{line.label} (in {line.n} of {total})"


def _mean_std(spread: Spread, signed_mean: bool = False) -> str:
    if not spread.n:
        return "–"
    mean = signed(spread.mean) if signed_mean else f"{spread.mean:.2f}"
    return mean if spread.std is None else f"{mean} ± {spread.std:.2f}"


def _numbers(spread: Spread) -> list[float | None]:
    return [spread.mean, spread.std, spread.low, spread.high]


def _each(spread: Spread, experiments: Sequence[str]) -> list[float | None]:
    return [spread.values.get(name) for name in experiments]


def _ascii(text: str) -> str:
    return text.replace(MINUS, "-")


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Numbers to four decimals, a missing one empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
                      for row in rows])
    return buffer.getvalue()


def _text(fmt: str, caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    render = TEXT_RENDERERS.get(fmt)
    if render is None:
        raise ConfigError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return render(caption, header, rows)


def _markdown(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [caption, "", md_line(header), md_line(["---", *("---:" for _ in header[1:])])]
    lines += [md_line([row[0].replace("|", "\\|"), *row[1:]]) for row in rows]
    return "\n".join(lines) + "\n"


def _latex(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    lines = [f"% {caption}", f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join(latex_escape(cell) for cell in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


TEXT_RENDERERS: dict[str, Callable[[str, Sequence[str], Sequence[Sequence[str]]], str]] = {
    "md": _markdown, "tex": _latex}


# --- the report stage's across mode -------------------------------------------------------------


def is_across(cfg: Mapping[str, Any]) -> bool:
    """A report over every experiment matching ``name`` (a glob: ``demo-seed*``)."""
    return is_name_pattern(cfg["name"])


def check_across(cfg: Mapping[str, Any]) -> bool:
    """Everything an across report reads, checked; then, unless this is a dry run, the
    report itself, before Hydra would make its run folder inside a folder named after the
    pattern (True: done)."""
    if cfg.get("compare"):
        raise ConfigError(f"compare={cfg['compare']} compares one experiment; an across report "
                          f"(name={cfg['name']!r}) takes none")
    if str(cfg["results"]) != str(cfg["results_file"]):
        raise ConfigError(f"results={cfg['results']} and name={cfg['name']!r} both say what to read: "
                          "give the experiments by name only")
    check_formats(list(cfg["formats"]))
    root, pattern, results_name, _ = _settings(cfg)
    found, _ = find_experiments(root, pattern, results_name)
    if cfg.get("dry_run"):
        for name in found:
            read_results(root / name / results_name)
        return False
    run_across(cfg)
    return True


def plan_across(cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    """A dry run's lines: the experiments read, those left out, where the tables go."""
    root, pattern, results_name, report_dir = _settings(cfg)
    found, missing = find_experiments(root, pattern, results_name)
    lines = [f"across {plural(len(found), 'experiment')} matching {pattern!r} under {root}: {', '.join(found)}"]
    lines += [f"left out, no {results_name}: {', '.join(missing)}"] if missing else []
    kinds = ",".join(cfg["formats"])
    return {"report": lines, "outputs": [f"report: {report_dir} ({TABLE_FILE}.{{{kinds}}}, {CLAIMS_FILE}.{{{kinds}}})"]}


def run_across(cfg: Mapping[str, Any]) -> dict[str, Path]:
    """Find the experiments, warn about any without results, write, log to W&B and print the tables."""
    root, pattern, results_name, report_dir = _settings(cfg)
    found, missing = find_experiments(root, pattern, results_name)
    for name in missing:
        warnings.warn(f"experiment {name} matches name={pattern!r} but has no {root / name / results_name}; "
                      "left out of the across report", stacklevel=2)
    across, outputs = report_across({name: root / name / results_name for name in found}, report_dir,
                                    list(cfg["formats"]), str(cfg["per_recipe"]))
    log_once(cfg, report_dir, stage="report", name=f"report-{pattern}", summary=wandb_summary(across),
             tables={"across_table": line_records(across), "across_claims": claim_records(across)},
             directory=_wandb_directory(cfg, report_dir))
    print(summary(across))
    print(f"report written to {report_dir.resolve()}:")
    for key, path in outputs.items():
        print(f"  {key}: {path}")
    return outputs


def _settings(cfg: Mapping[str, Any]) -> tuple[Path, str, str, Path]:
    """``(output root, pattern, results file name, report folder)``: ``report_dir`` as the
    user gave it, or :func:`across_dir` when it is the default inside the pattern's ``out_dir``."""
    root = Path(str(cfg["paths"]["output_dir"])).expanduser()
    pattern = str(cfg["name"])
    report_dir = Path(str(cfg["report_dir"])).expanduser()
    out_dir = Path(str(cfg["out_dir"])).expanduser()
    if out_dir == report_dir or out_dir in report_dir.parents:
        report_dir = across_dir(root, pattern)
    return root, pattern, Path(str(cfg["results_file"])).name, report_dir


def _wandb_directory(cfg: Mapping[str, Any], report_dir: Path) -> Path | None:
    """The report folder when ``logger.dir`` is the default, the pattern's ``out_dir`` (a folder
    named ``demo-seed*`` that no experiment has); None (``logger.dir``) when the user gave one."""
    logger_dir = Path(str(config_get(cfg, "logger.dir") or cfg["out_dir"])).expanduser()
    out_dir = Path(str(cfg["out_dir"])).expanduser()
    return report_dir if logger_dir == out_dir or out_dir in logger_dir.parents else None
