"""The one shape every evaluation dataset takes, whatever its on-disk layout.

A dataset is a list of ``(image path, target)`` pairs plus a projection from the
model's logits (one column per class of the model's :class:`ClassSpace`) onto the
dataset's targets. ImageNet-R/A keep 200 columns, ObjectNet takes a max over groups of
columns, ImageNet itself is the identity; all are one mechanism: ``LogitProjection``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from soup_exp.errors import SoupExpError
from soup_exp.utils.hashing import file_stamp, stable_hash


@dataclass(frozen=True)
class LogitProjection:
    """Target ``t`` is scored by the max of the model logits in ``groups[t]``.

    Groups of one column select columns (ImageNet-R/A); larger groups implement
    many-to-one mappings (ObjectNet). ``None`` groups means identity.
    """

    groups: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not self.groups or any(len(g) == 0 for g in self.groups):
            raise ValueError("LogitProjection needs at least one non-empty group per target")

    @classmethod
    def select(cls, columns: Sequence[int]) -> LogitProjection:
        return cls(tuple((int(c),) for c in columns))

    @property
    def num_targets(self) -> int:
        return len(self.groups)

    def index_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(targets, max group size) column indices, short groups padded by repetition."""
        width = max(len(g) for g in self.groups)
        rows = [list(g) + [g[0]] * (width - len(g)) for g in self.groups]
        return torch.tensor(rows, dtype=torch.long, device=device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        index = self.index_tensor(logits.device)
        if index.shape[1] == 1:
            return logits[:, index[:, 0]]
        return logits[:, index].amax(dim=-1)


@dataclass
class LabeledImages:
    """An evaluation (or held-out) set in model-independent form.

    ``name`` is the result key (``ImageNet``, ``ImageNetR``, ...); ``targets`` index the
    projected logits; ``border_crop`` pixels are cut from every side of each image
    before preprocessing (ObjectNet's 2-pixel border).
    """

    name: str
    samples: list[tuple[str, int]]
    num_targets: int
    projection: LogitProjection | None = None
    border_crop: int = 0
    root: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.samples]

    @property
    def targets(self) -> torch.Tensor:
        return torch.tensor([t for _, t in self.samples], dtype=torch.long)

    def project(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.projection is None else self.projection(logits)

    def files_fingerprint(self) -> str:
        """Hash of every (path, size, mtime): any edited, added, removed or reordered file changes it."""
        entries = []
        for path in self.paths:
            try:
                entries.append((path, *file_stamp(path)))
            except OSError as error:
                raise SoupExpError(f"{self.name}: cannot read {path} ({error.strerror or error})") from error
        return stable_hash(entries, length=32)

    def identity(self) -> str:
        """What a result on this dataset depends on besides the model and the transform:
        the files, their labels, the projection and the crop."""
        return stable_hash({
            "name": self.name, "root": str(self.root), "files": self.files_fingerprint(),
            "targets": stable_hash([t for _, t in self.samples]), "num_targets": self.num_targets,
            "projection": None if self.projection is None else [list(g) for g in self.projection.groups],
            "border_crop": self.border_crop,
        }, length=20)
