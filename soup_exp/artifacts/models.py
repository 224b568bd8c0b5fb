"""The one reader of an experiment's models: the zero-shot directory, the ingredients
directory and the soups directory, read into typed records.

- :class:`WeightsModel`: a run (ingredient or zero-shot model) or a weight-space soup,
  evaluated from one ``model.safetensors``;
- :class:`Ensemble`: an output-space soup whose ``members`` resolve to weights files;
- :class:`SoupRecord`: what a ``soup.json`` holds, field by field, so that "a learned
  soup" or "a greedy history" is a property of the record and not a key some module
  looks for; :class:`SoupCost` is its ``cost`` (what cooking it took).

Evaluate, analyze and report read models through this module; the checks of each JSON
file are those of :mod:`soup_exp.artifacts.dirs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from soup_exp.artifacts.dirs import (
    SOUP_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    find_dirs,
    ingredient_record,
    is_finished_run,
    pool_paths,
    recorded_ingredient_paths,
    run_weights,
    runs_at,
    soup_record,
)

# soup.json keys with a meaning of their own; everything else a recipe records is ``extra``
SOUP_FIELDS = ("name", "recipe", "kind", "label", "ingredients", "ingredient_paths", "num_ingredients",
               "base_model", "classes", "params", "metrics", "coefficients", "members", "held_out_accuracy",
               "history", "alpha", "interpolated", "beta", "curve", "cost")


@dataclass(frozen=True)
class SoupCost:
    """``soup.json``'s ``cost``: what cooking the soup's recipe took, as the soup stage
    measured it (:mod:`soup_exp.soups.cost` says how). A value is None where it was not
    measured (no GPU: ``peak_device_bytes``); a soup cooked before costs were recorded has
    no cost at all (``SoupRecord.cost`` is None)."""

    wall_s: float | None = None
    peak_host_bytes: int | None = None
    peak_device_bytes: int | None = None
    held_out_passes: int | None = None
    ingredient_reads: float | None = None

    @classmethod
    def of(cls, value: Any) -> SoupCost | None:
        """The cost recorded (a checked mapping, see :func:`~soup_exp.artifacts.dirs.soup_record`), or None."""
        if not isinstance(value, Mapping):
            return None
        return cls(**{f.name: value.get(f.name) for f in fields(cls)})

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SoupRecord:
    """A ``soup.json``, checked (:func:`~soup_exp.artifacts.dirs.soup_record`), as typed
    fields. Values are kept as written (``None`` where a key is absent); ``json`` is the
    object as read, for code that passes it on whole."""

    name: str
    directory: Path
    recipe: str | None = None
    kind: str | None = None
    label: str | None = None
    ingredients: tuple[str, ...] = ()
    ingredient_paths: tuple[str | None, ...] = ()
    num_ingredients: int | None = None
    base_model: str | None = None
    classes: Any = None
    params: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    coefficients: Any = None  # a list per ingredient, or layer -> list (learned soups)
    members: tuple[Any, ...] | None = None  # an ensemble's ingredient names, indices or paths
    held_out_accuracy: float | None = None
    history: tuple[Any, ...] | None = None  # the greedy soup's candidates, in the order tried
    alpha: float | None = None  # WiSE-FT's mixing weight
    interpolated: Any = None  # WiSE-FT: the fine-tuned model interpolated with
    beta: Any = None  # learned soups: the learned temperature
    curve: Any = None  # learned soups: the loss per step
    cost: SoupCost | None = None  # what cooking it took; None for soups of an older soup-exp
    extra: Mapping[str, Any] = field(default_factory=dict)
    json: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, soup_dir: Path) -> SoupRecord:
        """The record of a finished soup directory (its ``soup.json`` checked)."""
        return cls.of(soup_record(soup_dir), soup_dir)

    @classmethod
    def of(cls, record: Mapping[str, Any], soup_dir: Path) -> SoupRecord:
        def listed(key: str) -> tuple | None:
            value = record.get(key)
            return tuple(value) if isinstance(value, list | tuple) else value

        known = {key: record.get(key) for key in SOUP_FIELDS}
        names, paths = record.get("ingredients"), record.get("ingredient_paths")
        known.update(ingredients=tuple(str(n) for n in names) if isinstance(names, list | tuple) else (),
                     ingredient_paths=tuple(paths) if isinstance(paths, list | tuple) else (),
                     members=listed("members"), history=listed("history"), cost=SoupCost.of(record.get("cost")))
        extra = {k: v for k, v in record.items() if k not in SOUP_FIELDS}
        return cls(directory=Path(soup_dir), extra=extra, json=dict(record), **known)

    @property
    def is_ensemble(self) -> bool:
        """An output-space soup: evaluated from its members' logits, not from weights."""
        return self.members is not None

    @property
    def is_learned(self) -> bool:
        """A learned soup: mixing coefficients and a temperature were learned."""
        return self.beta is not None and self.coefficients is not None

    @property
    def display_label(self) -> str:
        return str(self.label or self.name)

    def recorded_paths(self) -> dict[str, Path]:
        """Ingredient name -> the file this soup recorded for it (read from its folder)."""
        return recorded_ingredient_paths(self.json, self.directory)


@dataclass(frozen=True)
class WeightsModel:
    """A model evaluated from one weights file: a run, the zero-shot model, or a soup.
    ``record`` is its checked ``ingredient.json`` (or ``soup.json``); ``soup`` is set for soups."""

    name: str
    kind: str
    directory: Path
    weights: Path
    record: Mapping[str, Any]
    soup: SoupRecord | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.weights,)


@dataclass(frozen=True)
class Ensemble:
    """An output-space soup: the mean of its members' logits; ``members`` are weights files."""

    name: str
    kind: str
    directory: Path
    members: tuple[Path, ...]
    soup: SoupRecord

    @property
    def record(self) -> Mapping[str, Any]:
        return self.soup.json

    @property
    def files(self) -> tuple[Path, ...]:
        return self.members


Model = WeightsModel | Ensemble


def read_run(run_dir: Path, default_kind: str, record: Mapping[str, Any] | None = None) -> WeightsModel:
    """A finished run directory (``ingredient.json``, unless already read into ``record``, and weights)."""
    record = ingredient_record(run_dir) if record is None else record
    return WeightsModel(record["name"], str(record.get("kind") or default_kind), Path(run_dir),
                        run_weights(run_dir), record)


def read_runs(zeroshot_dir: str | os.PathLike, pool: str | os.PathLike | Iterable[str | os.PathLike]) -> list[WeightsModel]:
    """The zero-shot model (if present) and the finished runs of the pool (``soup.pool``: the
    paths, globs and folders the soup stage reads its ingredients from), in pool order."""
    zeroshot = Path(zeroshot_dir)
    models = [read_run(zeroshot, "zeroshot")] if is_finished_run(zeroshot) else []
    seen = {zeroshot.resolve()}
    for path in pool_paths(pool):
        for run_dir in runs_at(path) if path.is_dir() else []:
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                models.append(read_run(run_dir, "finetune"))
    return models


def soup_records(soups_dir: str | os.PathLike) -> list[SoupRecord]:
    """Every finished soup's record (``soup.json``) in ``soups_dir``, in name order."""
    return [SoupRecord.read(soup_dir) for soup_dir in find_dirs(Path(soups_dir), SOUP_FILE, recursive=False)]


def resolve_member(member: Any, soup: SoupRecord, known: Mapping[str, Path]) -> Path:
    """The weights file of an ensemble member: an ingredient name, an index into
    ``ingredients``, or a path. A name is looked up among this experiment's models first
    (``known``: name -> weights), then at the path the soup recorded (relative to its
    folder, so a copied experiment reads its own files)."""
    if isinstance(member, int) and member < len(soup.ingredients):
        member = soup.ingredients[member]
    member = str(member)
    if member in known:
        return known[member]
    folder = soup.directory
    for candidate in (soup.recorded_paths().get(member, folder / member), folder / member):
        if candidate.is_dir() and (candidate / WEIGHTS_FILE).is_file():
            return candidate / WEIGHTS_FILE
        if candidate.is_file() and candidate.suffix == ".safetensors":
            return candidate
    raise ArtifactError(
        f"{folder / SOUP_FILE}: ensemble member {member!r} is neither a known ingredient "
        f"({', '.join(sorted(known)) or 'none found'}) nor a path to {WEIGHTS_FILE}"
    )


def soup_model(soup: SoupRecord, known: Mapping[str, Path]) -> Model:
    """The evaluable model of a soup: an :class:`Ensemble` (members resolved) or its weights."""
    if soup.is_ensemble:
        members = tuple(resolve_member(m, soup, known) for m in soup.members or ())
        return Ensemble(soup.name, str(soup.kind or "ensemble"), soup.directory, members, soup)
    return WeightsModel(soup.name, str(soup.kind or "soup"), soup.directory,
                        run_weights(soup.directory, SOUP_FILE), soup.json, soup)


def read_soups(soups_dir: str | os.PathLike, known: Mapping[str, Path]) -> list[Model]:
    """Soups (weights) and output-space ensembles (``members``), in name order."""
    return [soup_model(soup, known) for soup in soup_records(soups_dir)]


def read_models(zeroshot_dir: str | os.PathLike, pool: str | os.PathLike | Iterable[str | os.PathLike],
                soups_dir: str | os.PathLike) -> list[Model]:
    """Every evaluable model of an experiment; two models of one name are an error."""
    runs = read_runs(zeroshot_dir, pool)
    models: list[Model] = [*runs, *read_soups(soups_dir, {m.name: m.weights for m in runs})]
    check_unique(models)
    return models


def check_unique(models: Sequence[Model]) -> None:
    check_unique_names(((m.name, m.directory) for m in models), "models", "result rows are keyed by name")


def check_unique_names(named: Iterable[tuple[str, Any]], what: str, why: str) -> None:
    """Names key results and caches, so two of one name is an error naming both places."""
    seen: dict[str, Any] = {}
    for name, where in named:
        if name in seen:
            raise ArtifactError(f"two {what} are named {name!r}: {seen[name]} and {where}; {why}, rename one")
        seen[name] = where
