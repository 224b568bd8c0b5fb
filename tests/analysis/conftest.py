"""A tiny world for the analysis suite: small PNG datasets (held-out, ImageNet, the five
shifts with their projections, a training subset), a two-layer classifier, and a pool
(zero-shot, LP init, four fine-tunes from it) trained here. Evaluation is the real
:class:`~soup_exp.evaluation.evaluator.Evaluator` with its preprocessed cache; only the
dataset builders and the skeleton are swapped for these small ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torchvision import transforms as T

from soup_exp.analysis.context import AnalysisContext
from soup_exp.analysis.suite import Suite
from soup_exp.data.base import LabeledImages, LogitProjection
from soup_exp.evaluation.evaluator import Evaluator
from soup_exp.soups.judge import Judge
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.utils.io import atomic_write_json

NUM_CLASSES = 4
SIZE = 8
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.float32)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# name: (images per class, colour shift, noise, projection groups or None)
DATASETS: dict[str, tuple[int, float, float, tuple[tuple[int, ...], ...] | None]] = {
    "ImageNet2p": (10, 0.0, 60.0, None),
    "ImageNet": (10, 0.0, 60.0, None),
    "ImageNetV2": (6, 10.0, 70.0, None),
    "ImageNetSketch": (6, 60.0, 80.0, None),
    "ImageNetR": (6, 40.0, 70.0, ((0,), (1,), (2,))),
    "ObjectNet": (6, 30.0, 90.0, ((0, 3), (1,), (2,))),
    "ImageNetA": (6, 50.0, 90.0, None),
}


class TinyClassifier(nn.Module):
    """Keys like an ImageClassifier's: ``image_encoder.*`` and ``head.*``."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 12), nn.Tanh())
        self.head = nn.Linear(12, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_encoder(x))


def transform() -> T.Compose:
    return T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])


def write_dataset(root: Path, name: str, per_class: int, shift: float, noise: float, groups, seed: int) -> LabeledImages:
    rng = np.random.default_rng(seed)
    samples = []
    for cls in range(NUM_CLASSES):
        target = next((t for t, g in enumerate(groups) if cls in g), None) if groups else cls
        if target is None:
            continue
        for i in range(per_class):
            pixels = COLOURS[cls] + shift + rng.normal(0, noise, size=(SIZE, SIZE, 3))
            path = root / name / f"{cls}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
            samples.append((str(path), target))
    projection = LogitProjection(groups) if groups else None
    return LabeledImages(name, samples, len(groups) if groups else NUM_CLASSES, projection, root=str(root / name))


@dataclass
class World:
    out: Path
    datasets: list[LabeledImages]
    train: LabeledImages
    cache: Path
    forward_passes: list[str] = field(default_factory=list)

    def evaluator(self, datasets=None) -> Evaluator:
        return Evaluator(datasets or self.datasets, transform(), batch_size=64, device="cpu", precision="fp32",
                         cache_dir=str(self.cache), progress=False)

    def cfg(self, *overrides: str, config_dir: Path | None = None) -> Any:
        from hydra import compose, initialize_config_dir

        extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []  # a user's configs too
        with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
            return compose(config_name="analyze", overrides=[
                f"paths.output_dir={self.out.parent}", f"name={self.out.name}", "progress=false",
                "logger=disabled", "device=cpu", "eval.models_per_pass=2", f"eval.cache.dir={self.cache}",
                *extra, *overrides])


def _train(model: nn.Module, evaluator: Evaluator, steps: int, lr: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        for images, targets in evaluator.batches("Train", 16, shuffle=True, generator=generator):
            opt.zero_grad()
            nn.functional.cross_entropy(model(images), targets).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_run(root: Path, name: str, state_dict: dict, **info: Any) -> Path:
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(run / "model.safetensors"))
    atomic_write_json(run / "ingredient.json", {"name": name, "kind": "finetune", "base_model": "test:tiny", **info})
    return run


@pytest.fixture(scope="session")
def world_template(tmp_path_factory) -> World:
    """Datasets and the pool, built once per session; tests copy the output folder."""
    root = tmp_path_factory.mktemp("analysis_world")
    datasets = [write_dataset(root / "data", name, *spec, seed=i) for i, (name, spec) in enumerate(DATASETS.items())]
    train = write_dataset(root / "data", "Train", 15, 0.0, 60.0, None, seed=99)
    world = World(root / "out" / "exp", datasets, train, root / "cache")
    trainer = world.evaluator([train])
    torch.manual_seed(0)
    zeroshot = TinyClassifier()
    zs = _train(zeroshot, trainer, 1, 0.02, seed=0)
    write_run(world.out, "zeroshot", zs, kind="zeroshot")
    lp = TinyClassifier()
    lp.load_state_dict(zs)
    lp_sd = _train(lp, trainer, 2, 0.05, seed=1)
    lp_dir = write_run(world.out / "ingredients", "lp_init", lp_sd, kind="lp")
    drawn = [{"lr": 0.1, "wd": 0.0}, {"lr": 0.2, "wd": 0.0}, {"lr": 0.2, "wd": 0.1}, {"lr": 0.3, "wd": 0.2}]
    for i, hp in enumerate(drawn):
        model = TinyClassifier()
        model.load_state_dict(lp_sd)
        sd = _train(model, trainer, 2 + i, hp["lr"], seed=10 + i)
        write_run(world.out / "ingredients", f"ft_{i}", sd, hparams={"init_from": str(lp_dir), **hp},
                  sweep={"drawn": hp})
    return world


@pytest.fixture
def world(world_template, tmp_path, monkeypatch) -> World:
    """A fresh copy of the experiment folder, and the judge and suite wired to the tiny world."""
    import shutil

    out = tmp_path / "out" / "exp"
    shutil.copytree(world_template.out, out)
    for run in out.rglob("ingredient.json"):  # the LP init the fine-tunes name moved with the copy
        text = run.read_text().replace(str(world_template.out), str(out))
        run.write_text(text)
    world = World(out, world_template.datasets, world_template.train, world_template.cache)
    evaluator = world.evaluator()
    train_evaluator = world.evaluator([world.train])
    original = Evaluator._forward_pass

    def counting(self, name, modules, what):
        world.forward_passes.append(name)
        return original(self, name, modules, what)

    monkeypatch.setattr(Evaluator, "_forward_pass", counting)
    monkeypatch.setattr(Judge, "_evaluator", property(lambda self: evaluator))  # the soup stage's judge too
    monkeypatch.setattr(Judge, "classes", property(lambda self: SimpleNamespace(num_classes=NUM_CLASSES)))
    monkeypatch.setattr(Judge, "_classifier", property(lambda self: self._memo(
        "classifier", lambda: (TinyClassifier(), SimpleNamespace(preprocess_val=transform())))))
    monkeypatch.setattr(Suite, "train_subset", lambda self, images, seed: (train_evaluator, "Train"))
    return world


class FakeRun:
    """What the stages log to W&B, kept in memory."""

    def __init__(self):
        self.images, self.tables, self.summaries, self.logs = {}, {}, {}, []

    def log(self, metrics, step=None):
        self.logs.append(metrics)

    def log_table(self, key, columns, rows):
        self.tables[key] = (columns, rows)

    def log_image(self, key, path, caption=None):
        self.images[key] = Path(path)

    def summary(self, values):
        self.summaries.update(values)

    def finish(self):
        pass


@pytest.fixture
def fake_run():
    """A factory of in-memory W&B runs."""
    return FakeRun


@pytest.fixture
def context(world):
    """``make(analysis name, *overrides) -> AnalysisContext`` of that analysis, as the stage builds it."""
    from soup_exp.soups.ingredients import load_ingredients
    from soup_exp.stages.roles import AnalysisRoles
    from soup_exp.utils.config import to_plain

    def make(name: str = "test", *overrides: str) -> AnalysisContext:
        cfg = world.cfg(*overrides)
        return AnalysisRoles(cfg, load_ingredients(to_plain(cfg.soup.pool)), FakeRun()).context(name, "test-key")

    return make


@pytest.fixture
def cook(world):
    """``cook(*recipes)``: the soup stage on the tiny pool (greedy, uniform, ensemble, ...)."""
    from soup_exp.soup import run_soups

    def run(*recipes: str) -> None:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
            cfg = compose(config_name="soup", overrides=[
                f"paths.output_dir={world.out.parent}", f"name={world.out.name}", "progress=false",
                "logger=disabled", "device=cpu", f"eval.cache.dir={world.cache}", f"recipes=[{','.join(recipes)}]"])
        run_soups(cfg, run=FakeRun())

    return run


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
