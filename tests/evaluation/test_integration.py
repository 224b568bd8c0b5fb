"""The evaluator on the real loaders, reading the generated miniature ImageNet family."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from soup_exp.data.registry import class_space
from soup_exp.evaluation.evaluator import build_evaluator
from soup_exp.evaluation.settings import EvalSettings
from soup_exp.inputs import prepare_inputs
from soup_exp.models import build_classifier
from soup_exp.stages.entry import packaged_config_dir

CONF = str(packaged_config_dir())


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("integ")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        composed = compose(config_name="evaluate", overrides=[
            "data=synthetic", "model=tiny_clip", "model.pretrained=null", f"paths.cache_dir={cache}",
            "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=3",
            "data.synthetic.shift_per_class=2", "data.synthetic.pretrain_per_class=1",
            "data.heldout.per_class=2", "num_workers=0", "device=cpu", "progress=false",
        ])
    prepare_inputs({"data": composed.data})  # the data stage's work: the generated family
    return composed


def test_suite_on_real_layouts_cache_matches_decoding(cfg):
    torch.manual_seed(0)
    classes = class_space(cfg.data)
    model, backbone = build_classifier(cfg.model, classes.num_classes)
    torch.nn.init.normal_(model.head.weight)
    cached = build_evaluator(EvalSettings.from_config(cfg), backbone.preprocess_val, classes)
    cfg.eval.cache.enabled = False
    plain = build_evaluator(EvalSettings.from_config(cfg), backbone.preprocess_val, classes)
    assert plain.cache is None and cached.cache is not None
    assert cached.names == list(cfg.eval.datasets)
    assert {n: cached.dataset(n).border_crop for n in cached.names} == dict.fromkeys(cached.names, 0)
    results = cached.evaluate({"m": model})["m"]
    assert results == plain.evaluate({"m": model})["m"]
    assert set(results) == {*cfg.eval.datasets, "avg_shifts"}
    for name in cached.names:
        assert torch.equal(cached.logits(model, name), plain.logits(model, name))
