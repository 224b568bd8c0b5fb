"""The model-soups authors' released checkpoints (``model_0.pt`` .. ``model_71.pt``) as ingredients.

Each release file is ``torch.save(ModelWrapper(CLIP ViT-B/32).state_dict())`` (the authors'
``utils.py``): the image tower under ``model.visual.*``, the linear head under
``classification_head.{weight,bias}``, and what is left of CLIP's text side once
ModelWrapper has deleted ``model.transformer``: ``model.token_embedding.weight``,
``model.positional_embedding``, ``model.ln_final.{weight,bias}``, ``model.text_projection``
and ``model.logit_scale``. The image classifier keeps the first two parts and drops the six
text tensors, which its forward pass never used (ModelWrapper calls ``encode_image`` only).

The expected layout is derived from the configured CLIP skeleton (no download), so the same
code checks the real ViT-B/32 files and the tiny test models. Files are read with
``torch.load(weights_only=True)`` only: a pickle that needs code to load is refused.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soup_exp.data.classes import ClassSpace
from soup_exp.errors import SoupExpError
from soup_exp.utils.hashing import file_stamp, stable_hash
from soup_exp.vocabulary import HELD_OUT

RELEASE_URL = "https://github.com/mlfoundations/model-soups/releases/download/v0.0.2/model_{index}.pt"
NUM_RELEASED = 72
RELEASE_FILE = re.compile(r"^model_(\d+)\.pt$")
WRAPPER_TOWER = "model.visual."
WRAPPER_TEXT = "model."
WRAPPER_HEAD = "classification_head."
HEAD_KEYS = ("weight", "bias")
# The numerics the authors measured every published accuracy with (no autocast).
PUBLISHED_PRECISION = "fp32"


class ReleaseCheckpointError(SoupExpError, ValueError):
    """A file that is not one of the authors' ModelWrapper checkpoints for this model."""


@dataclass(frozen=True)
class WrapperLayout:
    """Key -> shape of ``ModelWrapper(clip, feature_dim, num_classes).state_dict()``.

    ``tower`` is keyed by the image tower's own names (``conv1.weight``), ``text`` by the
    wrapper's (``model.logit_scale``); the head is ``(num_classes, feature_dim)``.
    """

    tower: Mapping[str, tuple[int, ...]]
    text: Mapping[str, tuple[int, ...]]
    feature_dim: int
    num_classes: int = 1000

    @classmethod
    def from_clip(cls, clip_model: nn.Module, num_classes: int = 1000) -> WrapperLayout:
        """The layout of the authors' wrapper around ``clip_model`` (an open_clip ``CLIP``,
        whose attribute names are OpenAI's): ModelWrapper deletes ``transformer``."""
        tower, text = {}, {}
        for key, tensor in clip_model.state_dict().items():
            if key.startswith("visual."):
                tower[key.removeprefix("visual.")] = tuple(tensor.shape)
            elif not key.startswith("transformer."):
                text[WRAPPER_TEXT + key] = tuple(tensor.shape)
        feature_dim = int(getattr(clip_model.visual, "output_dim", 0) or clip_model.text_projection.shape[1])
        return cls(tower=tower, text=text, feature_dim=feature_dim, num_classes=num_classes)

    def expected(self) -> dict[str, tuple[int, ...]]:
        shapes = {WRAPPER_TOWER + k: s for k, s in self.tower.items()}
        shapes.update(self.text)
        shapes[WRAPPER_HEAD + "weight"] = (self.num_classes, self.feature_dim)
        shapes[WRAPPER_HEAD + "bias"] = (self.num_classes,)
        return shapes

    def check(self, state_dict: Mapping[str, Any], source: str | os.PathLike) -> None:
        """Raise naming ``source`` and every missing, unexpected or mis-shaped key."""
        expected = self.expected()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        not_tensors = sorted(k for k in set(expected) & set(state_dict)
                             if not isinstance(state_dict[k], torch.Tensor))
        shapes = [f"{k}: {tuple(state_dict[k].shape)}, expected {expected[k]}"
                  for k in sorted(set(expected) & set(state_dict))
                  if k not in not_tensors and tuple(state_dict[k].shape) != expected[k]]
        not_float = sorted(k for k in set(expected) & set(state_dict) if k not in not_tensors
                           and not state_dict[k].is_floating_point())
        if missing or unexpected or not_tensors or shapes or not_float:
            problems = [f"{label}: {_few(keys)}" for label, keys in (
                ("missing keys", missing), ("unexpected keys", unexpected),
                ("not tensors", not_tensors), ("wrong shapes", shapes), ("not floating point", not_float),
            ) if keys]
            raise ReleaseCheckpointError(
                f"{source} is not a ModelWrapper checkpoint of this model ({len(expected)} tensors: "
                f"{WRAPPER_TOWER}*, {WRAPPER_HEAD}{{weight,bias}} of shape "
                f"({self.num_classes}, {self.feature_dim}), {len(self.text)} text-tower tensors); "
                + "; ".join(problems)
                + ". The release files are model_<i>.pt from " + RELEASE_URL.format(index="<i>")
                + "; check model=... (the release is CLIP ViT-B/32: model=vit_b32)."
            )

    def to_classifier(self, state_dict: Mapping[str, torch.Tensor], classes: ClassSpace) -> dict[str, torch.Tensor]:
        """The :class:`~soup_exp.models.classifier.ImageClassifier` state dict: the tower as
        ``image_encoder.*``, the head rows of ``classes`` as ``head.*``, text tensors dropped."""
        out = {f"image_encoder.{k}": state_dict[WRAPPER_TOWER + k] for k in self.tower}
        rows = torch.as_tensor(classes.indices, dtype=torch.long)
        full = list(classes.indices) == list(range(self.num_classes))
        for name in HEAD_KEYS:
            tensor = state_dict[WRAPPER_HEAD + name]
            out[f"head.{name}"] = tensor if full else tensor.index_select(0, rows)
        return out


def _few(keys: Sequence[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A release file's state dict, loaded with ``torch.load(weights_only=True)``; any file
    that needs code to unpickle, or that is no flat state dict, is refused naming the file."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
        if needs:
            raise ReleaseCheckpointError(
                f"{path}: refused: unpickling it would run Python code ({', '.join(needs)}). soup-exp "
                "reads checkpoints only with torch.load(weights_only=True); the authors' release "
                "files are plain state dicts and load that way, so this file is not one of them or "
                f"was re-saved with objects inside. Download it again from {RELEASE_URL.format(index='<i>')}."
            ) from err
        raise ReleaseCheckpointError(f"{path}: not a torch checkpoint ({_unpickler_reason(err)})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ReleaseCheckpointError(f"{path}: not a readable torch checkpoint ({reason}); "
                                     "is the download complete?") from err
    if not isinstance(loaded, Mapping) or not loaded:
        raise ReleaseCheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors) as saved by "
            f"torch.save(ModelWrapper(...).state_dict()), got {type(loaded).__name__}"
        )
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ReleaseCheckpointError(f"{path}: expected a flat state dict of tensors; entries {_few(bad)} are not "
                                     "(string, tensor) pairs")
    return dict(loaded)


def _unpickler_reason(err: Exception) -> str:
    text = str(err)
    _, _, after = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (after or text).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def release_files(directory: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(name, path)`` of every ``model_<i>.pt`` in ``directory``, by ``i``."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ReleaseCheckpointError(
            f"checkpoints={directory} is not a directory; download the release there "
            f"({RELEASE_URL.format(index='<i>')} for i in 0..{NUM_RELEASED - 1}, see docs/reproduce.md)"
        )
    found = sorted(((int(m.group(1)), p) for p in directory.iterdir()
                    if (m := RELEASE_FILE.match(p.name)) and p.is_file()), key=lambda item: item[0])
    if not found:
        raise ReleaseCheckpointError(
            f"checkpoints={directory} holds no model_<i>.pt files; download them from "
            f"{RELEASE_URL.format(index='<i>')} (i = 0..{NUM_RELEASED - 1})"
        )
    return [(f"model_{i}", p) for i, p in found]


def published_results(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The authors' ``individual_model_results.jsonl`` (or any results file) by model name."""
    from soup_exp.artifacts.results import read_results

    return {row["name"]: row for row in read_results(path)}


def import_checkpoint(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str,
    layout: WrapperLayout,
    classes: ClassSpace,
    base_model: str,
    published: Mapping[str, Any] | None,
    hparams_entry: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Read, check and map one release file and write it as the ingredient ``out_dir``
    (weights first, ``ingredient.json`` last, both atomic)."""
    from soup_exp.soups.ingredients import PUBLISHED_HELD_OUT
    from soup_exp.training.ingredient import write_ingredient
    from soup_exp.training.sweep import replay_train_values
    from soup_exp.utils.runtime import code_version

    state_dict = read_checkpoint(path)
    layout.check(state_dict, path)
    weights = layout.to_classifier(state_dict, classes)
    entry = dict(hparams_entry or {})
    is_lp = bool(entry) and replay_train_values(entry).get("mode") == "lp"
    held_out = (published or {}).get(HELD_OUT)
    info = {
        "name": name,
        "kind": "lp" if is_lp else "finetune",
        "base_model": base_model,
        "classes": list(classes.indices),
        "hparams": replay_train_values(entry) if entry else {},
        "sweep": {"kind": "release", "name": name, "index": None, "seed": None, "drawn": entry},
        "held_out_accuracy": None if held_out is None else float(held_out),
        "held_out_precision": PUBLISHED_PRECISION if held_out is not None else None,
        "held_out_data": PUBLISHED_HELD_OUT if held_out is not None else None,
        "metrics": {"published": dict(published or {})},
        "source": source_record(path),
        "config": dict(config or {}),
        "code_version": code_version(),
    }
    return write_ingredient(Path(out_dir), weights, info, identity=import_identity(path, name, base_model, classes))


def source_record(path: str | os.PathLike) -> dict[str, Any]:
    """The release file an ingredient came from: path, size and mtime (what resuming compares)."""
    size, mtime_ns = file_stamp(path)
    return {"release": "mlfoundations/model-soups v0.0.2", "file": str(Path(path).resolve()),
            "size": size, "mtime_ns": mtime_ns}


def import_identity(path: str | os.PathLike, name: str, base_model: str, classes: ClassSpace) -> dict[str, Any]:
    source = source_record(path)
    return {"import": "model-soups release", "name": name, "size": source["size"],
            "mtime_ns": source["mtime_ns"], "model": base_model, "classes": stable_hash(list(classes.indices))}
