"""An analysis resumes by its key: building the key's settings from typed settings must
not change it. The hashes were computed on main by ``AnalysisContext.key_for`` before it
took settings (a changed key would re-run every analysis of every experiment)."""

import pytest
from hydra import compose, initialize_config_dir

from soup_exp.analysis.settings import analysis_key_settings
from soup_exp.analyze import analysis_key
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.soups.settings import SoupSettings
from soup_exp.stages.entry import packaged_config_dir

FIXED = ["paths.data_dir=/pin/data", "paths.output_dir=/pin/out", "paths.cache_dir=/pin/cache", "device=cpu"]
PINNED = {
    (): "a2aad795477d4e8371e0",
    ("eval=in_dist", "soup.arithmetic=sum", "soup.accumulate_dtype=float64", "seed=3"): "fb9729bf645621b97a9d",
}


def analyze_cfg(*overrides):
    with initialize_config_dir(config_dir=str(packaged_config_dir()), version_base="1.3"):
        return compose(config_name="analyze", overrides=[*FIXED, *overrides])


@pytest.mark.parametrize("overrides", list(PINNED))
def test_the_analysis_key_is_the_one_main_computed(overrides):
    assert analysis_key(analyze_cfg(*overrides), [], "t.target", {"a": 1}) == PINNED[overrides]


def test_every_subtree_in_the_key_changes_it():
    base = analyze_cfg()

    def settings(cfg):
        return analysis_key_settings(cfg.model, EvalSettings.from_config(cfg), SoupSettings.from_config(cfg))

    reference = settings(base)
    for override in ["seed=1", "device=cuda", "eval.precision=bf16", "eval.ensemble_logits=raw",
                     "soup.arithmetic=sum", "soup.accumulate_dtype=float64", "data.heldout.per_class=3",
                     "eval=in_dist", "model.name=other"]:
        assert settings(analyze_cfg(override)) != reference, override
    assert settings(analyze_cfg("soup.kernel_device=auto", "eval.batch_size=3")) == reference  # not numerics
