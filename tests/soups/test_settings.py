"""SoupSettings: the soup stage's own settings, read and checked once."""

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from soup_exp.errors import ConfigError
from soup_exp.soups.settings import SoupSettings
from soup_exp.stages.entry import packaged_config_dir
from soup_exp.stages.roles import SoupRoles


def stage_cfg(**soup):
    return OmegaConf.create({
        "out_dir": "/runs/x", "soups_dir": "${out_dir}/soups", "zeroshot_dir": "${out_dir}/zeroshot",
        "progress": False, "seed": 4,
        "soup": {"accumulate_dtype": "float64", "arithmetic": "sum", "kernel_device": "cpu", **soup},
    })


def test_settings_read_the_soup_subtree():
    settings = SoupSettings.from_config(stage_cfg())
    assert settings == SoupSettings(accumulate_dtype=torch.float64, arithmetic="sum", kernel_device="cpu", seed=4,
                                    progress=False, soups_dir=Path("/runs/x/soups"),
                                    zeroshot_dir=Path("/runs/x/zeroshot"))
    assert settings.accumulate_dtype_name == "float64"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 5


@pytest.mark.parametrize(("key", "value"), [("accumulate_dtype", "float16"), ("arithmetic", "mean")])
def test_an_unknown_value_is_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError) as error:
        SoupSettings.from_config(stage_cfg(**{key: value}))
    message = str(error.value)
    assert message.startswith(f"soup.{key}={value!r}: expected one of ") and "\n" not in message


def soup_stage_cfg(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="soup", overrides=["paths.output_dir=/runs", "name=x", "seed=4", *overrides])


def test_the_recipe_context_takes_its_numerics_from_the_settings():
    cfg = soup_stage_cfg("soup.accumulate_dtype=float64", "soup.arithmetic=sum")
    ctx = SoupRoles(cfg, [], run=None).context("uniform", {})
    assert (ctx.accumulate_dtype, ctx.arithmetic, ctx.judge.seed, ctx.store.soups_dir) == (
        torch.float64, "sum", 4, Path(cfg.soups_dir))
    assert ctx.store.inputs()["numerics"] == {"accumulate_dtype": "float64", "arithmetic": "sum"}
    with pytest.raises(ConfigError, match="soup.accumulate_dtype='bf16'"):
        SoupRoles(soup_stage_cfg("soup.accumulate_dtype=bf16"), [], run=None)


@pytest.mark.parametrize("setting", ["soup.accumulate_dtype=bf16", "soup.arithmetic=mean"])
def test_the_soup_and_analyze_preflights_refuse_an_unknown_value_in_one_line(tmp_path, capsys, setting):
    from hydra import compose, initialize_config_dir
    from stage_errors import stage_error

    from soup_exp.analyze import check_analyze
    from soup_exp.soup import check_soups

    key, value = setting.split("=")
    for name, check in (("soup", check_soups), ("analyze", check_analyze)):
        with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
            cfg = compose(config_name=name, overrides=[f"paths.output_dir={tmp_path}", "logger=disabled", setting])
        err = stage_error(cfg, check, capsys)
        assert f"{key}={value!r}: expected one of" in err, err
