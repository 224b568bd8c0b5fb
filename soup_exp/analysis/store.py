"""Where one analysis writes (its folder under ``analysis_dir``) and what it has read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from soup_exp.artifacts.analysis import read_partial, write_partial


class AnalysisStore:
    """The running analysis's folder: ``out(stem)``, ``save_table``, ``register`` (its
    outputs), ``partial``/``save_partial`` (resume), and the files it read (``inputs``)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = Path(folder)
        self.key = key  # what its numbers depend on: a partial result of another key is not resumed
        self.outputs: list[Path] = []
        self.inputs: set[str] = set()
        self.folder.mkdir(parents=True, exist_ok=True)

    def out(self, stem: str) -> Path:
        """Base path (no suffix) of an output of the analysis."""
        return self.folder / stem

    def register(self, paths: Iterable[Path]) -> list[Path]:
        """Record files the analysis wrote (figures, tables) for its record and W&B."""
        paths = [Path(p) for p in paths]
        self.outputs += [p for p in paths if p not in self.outputs]
        return paths

    def save_table(self, stem: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        from soup_exp.reporting.figures import save_data

        return self.register([save_data(columns, rows, self.out(stem))])[0]

    def partial(self) -> dict[str, Any]:
        """Results an interrupted run of this analysis saved with :meth:`save_partial`."""
        return read_partial(self.folder, self.key)

    def save_partial(self, data: Mapping[str, Any]) -> None:
        write_partial(self.folder, self.key, data)

    def use(self, *paths: Path | None) -> None:
        """Files read besides the pool: the analysis's inputs."""
        self.inputs.update(str(Path(p).resolve()) for p in paths if p is not None)
