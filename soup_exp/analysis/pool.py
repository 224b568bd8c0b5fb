"""The pool as an analysis sees it: also every finished soup and ensemble, and the model
fine-tuning started from; the files it reads are the analysis's inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soup_exp.artifacts import (
    SOUP_FILE,
    WEIGHTS_FILE,
    find_dirs,
    recorded_ingredient_paths,
    soup_record,
)
from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import Ingredient, SafetensorsSource, resolve_ingredients
from soup_exp.soups.pool import Pool

INIT_CHOICES = ("auto", "zeroshot", "lp")


@dataclass
class SoupEntry:
    """A finished soup: weights (weight-space recipes) or members (logit ensembles)."""

    name: str
    kind: str
    recipe: str
    label: str
    record: dict[str, Any]
    weights: Ingredient | None = None
    members: list[Ingredient] = field(default_factory=list)


class AnalysisPool(Pool):
    """:class:`~soup_exp.soups.pool.Pool` plus ``soups()`` and ``initialisation(which)``; a
    soup is found by its soup.json (cooked with any inputs), and reading it is recorded."""

    analysis = ""  # the analysis it is handed to (for messages), set by :meth:`for_analysis`

    def for_analysis(self, name: str, use: Any) -> AnalysisPool:
        """This pool (its scores and models shared) for analysis ``name``, its reads told to ``use``."""
        view = self.recording({}, use)
        view.analysis = name
        return view

    def model(self, name: str) -> Ingredient:
        """A soup cooked earlier (named as the soup), an ingredient, or ``best_individual``."""
        soup_dir = self.soups_dir / name
        if (soup_dir / SOUP_FILE).is_file() and (soup_dir / WEIGHTS_FILE).is_file():
            self._use(soup_dir / SOUP_FILE, soup_dir / WEIGHTS_FILE)
            return _weights_of(soup_dir, soup_record(soup_dir))
        return super().model(name)

    def soups(self) -> list[SoupEntry]:
        """Every finished soup and ensemble in ``soups_dir``, in name order."""
        root = self.soups_dir
        if not root.is_dir():
            return []
        entries = []
        by_name = dict(zip(self.names, self.ingredients, strict=True))
        for soup_dir in find_dirs(root, SOUP_FILE, recursive=False):
            record = soup_record(soup_dir)
            self._use(soup_dir / SOUP_FILE, soup_dir / WEIGHTS_FILE)
            entry = SoupEntry(record["name"], str(record.get("kind") or "soup"), str(record.get("recipe") or ""),
                              str(record.get("label") or record["name"]), record)
            if record.get("members") is not None:
                entry.members = [self._member(m, soup_dir, record, by_name) for m in record["members"]]
            elif (soup_dir / WEIGHTS_FILE).is_file():
                entry.weights = _weights_of(soup_dir, record)
            else:
                continue
            entries.append(entry)
        return entries

    def _member(self, member: Any, soup_dir: Path, record: Mapping[str, Any],
                by_name: Mapping[str, Ingredient]) -> Ingredient:
        if str(member) in by_name:
            return by_name[str(member)]
        path = recorded_ingredient_paths(record, soup_dir).get(str(member))
        if path is not None and path.exists():
            self._use(Path(path))
            return resolve_ingredients(path, kinds=None)[0]
        raise ConfigError(f"{self.soups_dir / record['name'] / SOUP_FILE}: ensemble member {member!r} is not in "
                          f"the pool ({', '.join(self.names)}) and has no readable path")

    def initialisation(self, which: str = "auto") -> Ingredient:
        """The model fine-tuning started from: ``lp`` (the LP init the pool's fine-tunes
        name in ``hparams.init_from``, or its one ``lp`` ingredient), ``zeroshot``,
        ``auto`` (the LP init if there is one, else the zero-shot model) or a model name."""
        if which not in INIT_CHOICES:
            return self.model(which)
        lp = self._lp_init() if which in ("auto", "lp") else None
        if lp is not None:
            return lp
        if which in ("auto", "zeroshot") and self.zeroshot is not None:
            self._use(self.zeroshot.path)
            return self.zeroshot
        wanted = (self.base_needs(which) if which != "auto"
                  else f"an LP init or a zero-shot model in {self.zeroshot_dir}")
        raise ConfigError(f"analysis {self.analysis}: the initialisation '{which}' needs {wanted}; "
                          "name a model instead (an ingredient or soup name)")


def _weights_of(soup_dir: Path, record: Mapping[str, Any]) -> Ingredient:
    path = soup_dir / WEIGHTS_FILE
    return Ingredient(str(record["name"]), SafetensorsSource(path), path=path, info=dict(record))
