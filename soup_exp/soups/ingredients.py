"""Ingredients: find them, check they can be averaged, read them one tensor at a time.

A soup of 72 (or 720) models must not hold 72 models in memory, so every recipe reads
ingredients through :class:`LazyWeights`, whose tensors come lazily from safetensors
(``safe_open``, one tensor per read, mergekit style) or from an in-memory state dict.
Validation compares headers only (keys, shapes, dtypes, base model, classes) so it costs
nothing; finiteness is checked on each tensor as it is read, before any output is written.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from soup_exp.artifacts import (
    INGREDIENT_FILE,
    WEIGHTS_FILE,
    SoupRecord,
    WeightsModel,
    check_unique_names,
    ingredient_record,
    pool_paths,
    read_run,
    runs_at,
    soup_model,
)
from soup_exp.errors import SoupExpError
from soup_exp.soups.cost import BYTES_READ
from soup_exp.utils.io import why_unreadable

log = logging.getLogger(__name__)

# ``held_out_data`` of a score copied from the authors' published results
PUBLISHED_HELD_OUT = "published"

SOUPABLE_KINDS = frozenset({"lp", "finetune"})
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar"})

WeightsLike = Union[str, os.PathLike, Mapping[str, torch.Tensor], "LazyWeights"]


class IngredientError(SoupExpError, ValueError):
    """Ingredients that cannot be souped; the message names the file and the keys."""


class EmptyIngredientsError(IngredientError):
    pass


class UnsafeCheckpointError(IngredientError):
    pass


class IngredientMismatchError(IngredientError):
    pass


class NonFiniteWeightsError(IngredientError):
    pass


class IngredientNotFoundError(EmptyIngredientsError, FileNotFoundError):
    """A pool path that does not exist (yet): no fine-tune has finished there."""


class TensorSource:
    """Read-only, lazy access to a flat state dict."""

    def tensor_keys(self) -> list[str]:
        raise NotImplementedError

    def spec(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def iter_tensors(self, keys: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for key in keys if keys is not None else self.tensor_keys():
            yield key, self.get(key)

    def nbytes(self) -> int:
        total = 0
        for key in self.tensor_keys():
            dtype, shape = self.spec(key)
            total += torch.Size(shape).numel() * dtype.itemsize
        return total


class StateDictSource(TensorSource):
    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self._sd = dict(state_dict)

    def tensor_keys(self) -> list[str]:
        return list(self._sd)

    def spec(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        t = self._sd[key]
        return t.dtype, tuple(t.shape)

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key].detach()


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


class SafetensorsSource(TensorSource):
    """One safetensors file, read tensor by tensor; the header is read once.

    The file is opened per :meth:`iter_tensors` pass (sequential reads, one handle) or per
    :meth:`get` call, so no handle (and no mapped page) outlives the read that needed it.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self._keys = list(f.keys())
                self._specs = {}
                for key in self._keys:
                    sl = f.get_slice(key)
                    self._specs[key] = (_SAFETENSORS_DTYPES[sl.get_dtype()], tuple(sl.get_shape()))
                self.metadata = dict(f.metadata() or {})
        except Exception as e:  # safetensors raises its own error types for bad headers
            reason = why_unreadable(self.path)
            if reason is not None:
                raise IngredientError(f"{self.path}: cannot be read ({reason})") from e
            raise IngredientError(f"{self.path}: not a readable safetensors file ({e})") from e
        offsets = _data_offsets(self.path)
        self._keys.sort(key=lambda k: offsets.get(k, 0))

    def tensor_keys(self) -> list[str]:
        return list(self._keys)

    def spec(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        return self._specs[key]

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(key)

    def iter_tensors(self, keys: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            for key in keys if keys is not None else self._keys:
                yield key, f.get_tensor(key)


def _data_offsets(path: Path) -> dict[str, int]:
    """Key -> byte offset in the file, so passes read the file front to back."""
    import json
    import struct

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


@dataclass
class LazyWeights:
    """A model's weights under a name: lazy tensors and (for run directories) its metadata.

    Not only the pool's ingredients: the zero-shot model, the LP init and finished soups are
    read the same way. "Ingredient" means a member of the pool; this is any model on disk."""

    name: str
    source: TensorSource
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    check_finite: bool = True

    @classmethod
    def of(cls, model: WeightsModel) -> LazyWeights:
        """A model the reader of model directories (:mod:`soup_exp.artifacts.models`) found."""
        return cls(model.name, SafetensorsSource(model.weights), path=model.weights, info=dict(model.record))

    @classmethod
    def of_soup(cls, soup: SoupRecord) -> LazyWeights:
        """A weight-space soup cooked earlier, named as it was cooked, its soup.json as ``info``."""
        model = soup_model(soup, {})
        if not isinstance(model, WeightsModel):
            raise IngredientError(f"{soup.directory}: {soup.name!r} is an ensemble, it has no weights")
        return cls.of(model)

    @property
    def held_out_accuracy(self) -> float | None:
        value = self.info.get("held_out_accuracy")
        return None if value is None else float(value)

    def held_out_accuracy_at(self, precision: str | None, data: str | None = None) -> float | None:
        """The recorded held-out accuracy if it was measured at ``precision`` (``fp32`` or
        ``bf16``, see ``ingredient.json``'s ``held_out_precision``) and, given ``data`` (the
        judge's held-out identity), on that held-out data; else None: re-score it, so that
        greedy compares candidates and ingredients on the same images at the same numerics.
        A published score (an imported release) was measured on the authors' held-out split,
        which is what the paper's greedy soup ranks by."""
        if precision is not None and self.info.get("held_out_precision") != precision:
            return None
        recorded = self.info.get("held_out_data")
        if data is not None and recorded != data and recorded != PUBLISHED_HELD_OUT:
            return None
        return self.held_out_accuracy

    @property
    def base_model(self) -> str | None:
        return self.info.get("base_model")

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else f"in-memory state dict '{self.name}'"

    def tensor_keys(self) -> list[str]:
        return self.source.tensor_keys()

    def spec(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        return self.source.spec(key)

    def get(self, key: str) -> torch.Tensor:
        return self._checked(key, self.source.get(key))

    def tensors(self, keys: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for key, tensor in self.source.iter_tensors(keys):
            yield key, self._checked(key, tensor)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model in memory: only for recipes that need one model at a time."""
        return dict(self.tensors())

    def nbytes(self) -> int:
        return self.source.nbytes()

    def _checked(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor just read: counted (a recipe's ``cost``), and refused when not finite."""
        BYTES_READ.add(tensor.numel() * tensor.element_size())
        if self.check_finite and tensor.is_floating_point() and not all_finite(tensor):
            raise NonFiniteWeightsError(
                f"{self.where}: tensor '{key}' has NaN or infinite values; this ingredient "
                "cannot be souped (was its training run diverging?). Remove it from the pool."
            )
        return tensor


def all_finite(tensor: torch.Tensor) -> bool:
    """NaN and inf show in min/max; one fused pass, ~20x faster than isfinite().all()."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def resolve_ingredients(items: WeightsLike | Iterable[WeightsLike], *,
                        kinds: frozenset[str] | None = SOUPABLE_KINDS) -> list[LazyWeights]:
    """Turn paths, run directories, sweep directories, globs and state dicts into ingredients.

    A directory with ``ingredient.json`` is one ingredient; any other directory is searched
    for run directories below it. Runs without ``ingredient.json`` are unfinished and are
    skipped with a note, as are runs whose ``kind`` is not in ``kinds`` (the zero-shot
    model is a baseline, not an ingredient). Pickled checkpoints are refused.
    """
    if isinstance(items, str | os.PathLike | Mapping | LazyWeights):
        items = [items]
    result: list[LazyWeights] = []
    searched: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, LazyWeights):
            result.append(item)
        elif isinstance(item, Mapping):
            result.append(LazyWeights(f"state_dict_{index}", StateDictSource(item)))
        else:
            searched.append(str(item))
            result.extend(_from_path_or_glob(str(item), kinds))
    if not result:
        where = ", ".join(searched) if searched else "the given list"
        raise EmptyIngredientsError(
            f"no ingredients found in {where}. Expected run directories holding "
            f"{WEIGHTS_FILE} + {INGREDIENT_FILE} (written by `soup-exp finetune`), .safetensors "
            "files or state dicts; set soup.pool to a sweep directory or glob."
        )
    check_unique_names(((ing.name, ing.where) for ing in result), "ingredients",
                       "names key the results (ingredient.json 'name')")
    return result


def _from_path_or_glob(spec: str, kinds: frozenset[str] | None) -> list[LazyWeights]:
    if glob.has_magic(spec):
        return [ing for m in pool_paths(spec) for ing in _from_path(m, kinds, explicit=False)]
    path = Path(spec).expanduser()
    if not path.exists():
        raise IngredientNotFoundError(
            f"ingredient path {path} does not exist: no ingredients yet? Fine-tune some first "
            "(`soup-exp finetune`, or `soup-exp pipeline`), or point soup.pool at your run directories"
        )
    return _from_path(path, kinds, explicit=True)


def _from_path(path: Path, kinds: frozenset[str] | None, explicit: bool) -> list[LazyWeights]:
    if path.is_file():
        return _from_file(path, kinds)
    runs = runs_at(path)
    if not runs and explicit and not any(path.iterdir()):
        log.warning("ingredient directory %s is empty", path)
    return [ing for run in runs for ing in _from_run_dir(run, kinds)]


def _from_file(path: Path, kinds: frozenset[str] | None) -> list[LazyWeights]:
    if path.name == INGREDIENT_FILE:
        return _from_run_dir(path.parent, kinds)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeCheckpointError(
            f"{path}: pickled checkpoints ({path.suffix}) are never loaded, since unpickling can "
            "run arbitrary code. Convert it to safetensors (safetensors.torch.save_file of its "
            "state dict, loaded once with torch.load(weights_only=True)) and pass the .safetensors file."
        )
    if path.suffix != ".safetensors":
        raise IngredientError(f"{path}: expected a .safetensors file or a run directory")
    if (path.parent / INGREDIENT_FILE).is_file() and path.name == WEIGHTS_FILE:
        return _from_run_dir(path.parent, kinds)
    source = SafetensorsSource(path)
    info = {k: source.metadata[k] for k in ("base_model",) if source.metadata.get(k)}
    return [LazyWeights(path.stem, source, path=path, info=info)]


def _from_run_dir(run: Path, kinds: frozenset[str] | None) -> list[LazyWeights]:
    info = ingredient_record(run)
    kind = info.get("kind")
    if kinds is not None and kind is not None and kind not in kinds:
        log.info("skipping %s: kind '%s' is not an ingredient (souped kinds: %s)", run, kind, sorted(kinds))
        return []
    pickled = [p.name for p in run.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickled and not (run / WEIGHTS_FILE).is_file():
        raise UnsafeCheckpointError(
            f"{run}: has {pickled} but no {WEIGHTS_FILE}; pickled checkpoints are never loaded. "
            "Convert them to safetensors."
        )
    return [LazyWeights.of(read_run(run, "finetune", record=info))]


def validate_ingredients(ingredients: Sequence[LazyWeights]) -> None:
    """Same keys, shapes, dtypes, base model and classes as the first ingredient, from headers only."""
    if not ingredients:
        raise EmptyIngredientsError("no ingredients to soup: the ingredient list is empty")
    ref = ingredients[0]
    ref_keys = ref.tensor_keys()
    ref_set = set(ref_keys)
    for ing in ingredients[1:]:
        keys = set(ing.tensor_keys())
        if keys != ref_set:
            missing, extra = sorted(ref_set - keys), sorted(keys - ref_set)
            raise IngredientMismatchError(
                f"{ing.where}: state-dict keys differ from {ref.where}; "
                f"missing {_few(missing)}, unexpected {_few(extra)}. "
                "All ingredients must be the same architecture."
            )
        bad = [k for k in ref_keys if ing.spec(k) != ref.spec(k)]
        if bad:
            details = "; ".join(f"'{k}': {_fmt(ing.spec(k))} vs {_fmt(ref.spec(k))}" for k in bad[:5])
            raise IngredientMismatchError(
                f"{ing.where}: {len(bad)} tensors differ in shape or dtype from {ref.where}: {details}"
            )
        for field_name in ("base_model", "classes"):
            a, b = ref.info.get(field_name), ing.info.get(field_name)
            if a is not None and b is not None and a != b:
                raise IngredientMismatchError(
                    f"{ing.where}: {field_name} {_short(b)} differs from {ref.where} ({_short(a)}); "
                    "only models fine-tuned from the same pretrained model on the same classes can be souped."
                )


def _few(keys: Sequence[str], n: int = 5) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(f"'{k}'" for k in keys[:n]) + "]" + more


def _fmt(spec: tuple[torch.dtype, tuple[int, ...]]) -> str:
    return f"{str(spec[0]).removeprefix('torch.')}{list(spec[1])}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def held_out_score(ing: LazyWeights, measure: Callable[[LazyWeights], float] | None, *,
                   precision: str | None, data: str | None = None) -> float:
    """``ing``'s recorded held-out accuracy if it was measured at ``precision`` on ``data``
    (:meth:`LazyWeights.held_out_accuracy_at`), else ``measure(ing)``: greedy compares
    candidates and ingredients on the same images at the same numerics."""
    value = ing.held_out_accuracy_at(precision, data)
    if value is not None:
        return value
    if measure is None:
        raise IngredientError(f"{ing.where}: no held-out accuracy and no evaluate function")
    log.info("held-out accuracy of %s is not recorded%s%s: evaluating it", ing.name,
             " for this held-out data" if data else "", f" at {precision}" if precision else "")
    return float(measure(ing))


def float_keys(ingredient: LazyWeights) -> list[str]:
    """Keys that are averaged; integer/bool buffers are copied from the first ingredient."""
    return [k for k in ingredient.tensor_keys() if ingredient.spec(k)[0].is_floating_point]


def load_ingredients(items: WeightsLike | Iterable[WeightsLike], *,
                     kinds: frozenset[str] | None = SOUPABLE_KINDS) -> list[LazyWeights]:
    """:func:`resolve_ingredients` then :func:`validate_ingredients`: what every recipe calls."""
    ingredients = resolve_ingredients(items, kinds=kinds)
    validate_ingredients(ingredients)
    return ingredients
