"""The paper's sweep space, replaying published settings, and config-time validation."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from soup_exp.errors import ConfigError
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.training.settings import train_settings
from soup_exp.training.sweep import (
    PACKAGED_HPARAMS,
    apply_sweep,
    draw_member,
    published_hparams,
    resolve_sweep,
)

CONF = packaged_config_dir()
# The ranges of PAPER.md (observed in the authors' hparam_info.json).
PAPER_RANGES = {"lr": (1e-6, 1e-4), "weight_decay": (8e-5, 0.53), "epochs": (4, 16),
                "mix": (0.0, 0.876), "label_smoothing": (0.0, 0.226)}


def _finetune_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="finetune", overrides=list(overrides))


def test_72_draws_stay_in_the_paper_ranges_with_its_off_structure() -> None:
    sweep = _finetune_cfg("sweep=paper_vitb32").sweep
    draws = []
    for i in range(72):
        sweep.index = i
        draws.append(resolve_sweep(sweep).train)
    for key, (low, high) in PAPER_RANGES.items():
        values = [d[key] for d in draws]
        assert all(low <= v <= high for v in values), key
    for key in ("lr", "weight_decay"):  # log-uniform: both decades of the range are used
        values = sorted(d[key] for d in draws)
        assert values[0] < 3 * PAPER_RANGES[key][0] * 10 and values[-1] > PAPER_RANGES[key][1] / 30
    assert {d["epochs"] for d in draws} >= {4, 16} or len({d["epochs"] for d in draws}) >= 10
    assert 20 <= sum(d["mix"] == 0 for d in draws) <= 55
    assert 20 <= sum(d["label_smoothing"] == 0 for d in draws) <= 55
    augs = [d["aug"] for d in draws]
    assert 12 <= sum(a is None for a in augs) <= 45
    for aug in filter(None, augs):
        m, n = map(int, re.fullmatch(r"rand-m(\d+)-n(\d+)", aug).groups())
        assert 1 <= m <= 20 and 0 <= n <= 2
    # reproducible from (seed, index); another seed gives another sweep
    again = resolve_sweep(_finetune_cfg("sweep=paper_vitb32", "sweep.index=5").sweep).train
    assert again == draws[5]
    other = resolve_sweep(_finetune_cfg("sweep=paper_vitb32", "sweep.index=5", "sweep.seed=1").sweep)
    assert other.train != draws[5]


def test_each_member_trains_with_its_own_seed() -> None:
    """Separate runs of a random search differ in data order and augmentation draws too."""
    seeds = {_finetune_cfg(f"sweep={sweep}", f"sweep.index={i}", f"sweep.seed={s}").seed
             for sweep in ("paper_vitb32", "demo") for i in range(4) for s in (0, 1)}
    assert len(seeds) == 8  # distinct across members and sweep seeds, the same for both sweeps
    assert _finetune_cfg("sweep=demo", "sweep.index=2").seed == _finetune_cfg("sweep=demo", "sweep.index=2").seed


def test_member_names_and_ingredient_dirs() -> None:
    cfg = _finetune_cfg("sweep=paper_vitb32", "sweep.index=7")
    assert cfg.sweep.name == "ft_007"
    assert cfg.train.output_dir.endswith("/ingredients/ft_007")
    assert cfg.train.init_from.endswith("/ingredients/lp_init")
    assert _finetune_cfg("sweep=paper_vitb32", "train.init_from=null").train.init_from is None


def test_replaying_model_43_reproduces_its_published_hyperparameters() -> None:
    cfg = _finetune_cfg("sweep=replay", "sweep.name=model_43")
    draw = apply_sweep(cfg)
    published = published_hparams()["model_43"]
    settings = train_settings(cfg.train)
    assert settings.lr == published["lr"] and settings.weight_decay == published["wd"]
    assert settings.epochs == published["epochs"] and settings.mix == published["mix"]
    assert settings.label_smoothing == published["smoothing"] and settings.aug == published["aug"]
    assert draw.drawn == published and cfg.sweep.name == "model_43"
    lp = _finetune_cfg("sweep=replay", "sweep.name=model_0")
    apply_sweep(lp)
    assert lp.train.mode == "lp" and lp.train.init_from is None


def test_published_settings_ship_with_the_package() -> None:
    assert published_hparams(None)["model_43"]["epochs"] == 11
    with pytest.raises(ConfigError, match="sweep.source=/nonexistent/hparam_info.json: no such file"):
        published_hparams("/nonexistent/hparam_info.json")


def test_every_published_setting_is_a_valid_config() -> None:
    base = _finetune_cfg("sweep=replay")
    for name in published_hparams():
        cfg = base.copy()
        cfg.sweep.name = name
        apply_sweep(cfg)
        train_settings(cfg.train)


def test_unknown_replay_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model_99"):
        apply_sweep(_finetune_cfg("sweep=replay", "sweep.name=model_99"))


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=-1e-4", "train.lr"),
    ("train.lr=nan", "train.lr"),
    ("train.aug=rand-m9-x2", "RandAugment"),
    ("train.aug=autoaug", "RandAugment"),
    ("train.mode=distill", "train.mode"),
    ("train.head_init=random", "train.head_init"),
    ("train.epochs=0", "train.epochs"),
    ("train.label_smoothing=1.5", "label_smoothing"),
    ("train.mix=-0.2", "train.mix"),
    ("train.grad_accum=3", "divisible"),
    ("+train.learning_rate=1e-4", "unknown train"),
])
def test_invalid_hyperparameters_fail_at_config_time(override: str, message: str) -> None:
    cfg = _finetune_cfg(override)
    with pytest.raises(ConfigError, match=message):
        train_settings(cfg.train)


def test_invalid_space_fails_before_training() -> None:
    cfg = _finetune_cfg("sweep=paper_vitb32", "sweep.space.lr.dist=gaussian")
    with pytest.raises(ConfigError, match="sweep.space.lr.dist"):
        apply_sweep(cfg)
    assert OmegaConf.select(cfg, "train.lr") == 3e-5


def test_randaugment_n_follows_the_published_frequencies() -> None:
    """N = 0/1/2 in 21/18/5 of the authors' 44 augmented runs; the sweep draws with those weights."""
    import collections

    published = [e["aug"] for e in published_hparams(PACKAGED_HPARAMS).values() if e.get("aug")]
    counts = collections.Counter(int(re.fullmatch(r"rand-m\d+-n(\d)", a).group(1)) for a in published)
    assert [counts[n] for n in (0, 1, 2)] == [21, 18, 5]
    sweep = _finetune_cfg("sweep=paper_vitb32").sweep
    assert list(sweep.space.aug.num_layers_weights) == [21, 18, 5]
    space = {"aug": OmegaConf.to_container(sweep.space.aug)}
    drawn = collections.Counter()
    for i in range(4000):
        aug = draw_member(space, int(sweep.seed), i)["aug"]
        if aug:
            drawn[int(aug.rsplit("-n", 1)[1])] += 1
    total = sum(drawn.values())
    for n, expected in ((0, 21 / 44), (1, 18 / 44), (2, 5 / 44)):
        assert abs(drawn[n] / total - expected) < 0.03, (n, drawn)
    assert abs(total / 4000 - 0.6) < 0.03  # augmented in 1 - p_off of the runs


def test_randaugment_weights_are_validated() -> None:
    sweep = _finetune_cfg("sweep=paper_vitb32", "sweep.space.aug.num_layers_weights=[1,1]",
                          "sweep.space.aug.p_off=0").sweep
    with pytest.raises(ConfigError, match="num_layers_weights needs one weight"):
        resolve_sweep(sweep)


def test_a_replay_on_the_demo_says_what_it_keeps_and_whole_setting_replays_everything(caplog) -> None:
    import logging

    partial = _finetune_cfg("experiment=demo", "sweep=replay", "sweep.name=model_43")
    with caplog.at_level(logging.INFO, logger="soup_exp.training.sweep"):
        apply_sweep(partial)
    assert (partial.train.batch_size, partial.train.warmup_steps) == (64, 20)  # the demo's
    assert "replay model_43 sets train.{lr=" in caplog.text and "epochs=11" in caplog.text
    assert "keeps this config's batch_size=64, warmup_steps=20 where the paper used batch_size=512, " \
           "warmup_steps=500" in caplog.text and "sweep.whole_setting=true" in caplog.text

    whole = _finetune_cfg("experiment=smoke", "sweep=replay", "sweep.name=model_43", "sweep.whole_setting=true",
                          "train.max_steps=3")
    draw = apply_sweep(whole)
    settings = train_settings(whole.train)
    assert (settings.batch_size, settings.warmup_steps, settings.grad_clip) == (512, 500, 1.0)
    assert settings.max_steps is None and settings.epochs == 11  # epochs as published, never capped
    assert draw.train["batch_size"] == 512
    lp = _finetune_cfg("experiment=demo", "sweep=replay", "sweep.name=model_0", "sweep.whole_setting=true")
    apply_sweep(lp)
    assert lp.train.mode == "lp" and lp.train.batch_size == 64  # the LP init is no fine-tune
