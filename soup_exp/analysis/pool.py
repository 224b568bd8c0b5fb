"""The pool as an analysis sees it: also every finished soup and ensemble, and the model
fine-tuning started from; the files it reads are the analysis's inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from soup_exp.artifacts import SOUP_FILE, WEIGHTS_FILE, SoupRecord, resolve_member, soup_records
from soup_exp.errors import ConfigError
from soup_exp.soups.ingredients import LazyWeights, resolve_ingredients
from soup_exp.soups.pool import Pool

INIT_CHOICES = ("auto", "zeroshot", "lp")


@dataclass
class SoupEntry:
    """A finished soup (its typed ``soup.json``): weights (weight-space recipes) or members
    (logit ensembles)."""

    soup: SoupRecord
    weights: LazyWeights | None = None
    members: list[LazyWeights] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.soup.name

    @property
    def kind(self) -> str:
        return str(self.soup.kind or "soup")

    @property
    def recipe(self) -> str:
        return str(self.soup.recipe or "")

    @property
    def label(self) -> str:
        return self.soup.display_label

    @property
    def record(self) -> Mapping[str, Any]:
        return self.soup.json


class AnalysisPool(Pool):
    """:class:`~soup_exp.soups.pool.Pool` plus ``soups()`` and ``initialisation(which)``; a
    soup is found by its soup.json (cooked with any inputs), and reading it is recorded."""

    analysis = ""  # the analysis it is handed to (for messages), set by :meth:`for_analysis`

    def for_analysis(self, name: str, use: Any) -> AnalysisPool:
        """This pool (its scores and models shared) for analysis ``name``, its reads told to ``use``."""
        view = self.recording({}, use)
        view.analysis = name
        return view

    def model(self, name: str) -> LazyWeights:
        """A soup cooked earlier (named as the soup), an ingredient, or ``best_individual``."""
        soup_dir = self.soups_dir / name
        if (soup_dir / SOUP_FILE).is_file() and (soup_dir / WEIGHTS_FILE).is_file():
            self._use(soup_dir / SOUP_FILE, soup_dir / WEIGHTS_FILE)
            return LazyWeights.of_soup(SoupRecord.read(soup_dir))
        return super().model(name)

    def soups(self) -> list[SoupEntry]:
        """Every finished soup and ensemble in ``soups_dir``, in name order."""
        entries = []
        for soup in soup_records(self.soups_dir):
            self._use(soup.directory / SOUP_FILE, soup.directory / WEIGHTS_FILE)
            if soup.is_ensemble:
                entries.append(SoupEntry(soup, members=[self._member(m, soup) for m in soup.members or ()]))
            elif (soup.directory / WEIGHTS_FILE).is_file():
                entries.append(SoupEntry(soup, weights=LazyWeights.of_soup(soup)))
        return entries

    def _member(self, member: Any, soup: SoupRecord) -> LazyWeights:
        """An ensemble member, by the reader's rules (:func:`~soup_exp.artifacts.resolve_member`):
        the pool's ingredient when it names one, else the file the soup recorded."""
        pool = {ing.path: ing for ing in self.ingredients if ing.path is not None}
        path = resolve_member(member, soup, {ing.name: path for path, ing in pool.items()})
        if path in pool:
            return pool[path]
        self._use(path)
        return resolve_ingredients(path, kinds=None)[0]

    def initialisation(self, which: str = "auto") -> LazyWeights:
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
