"""Zero-shot classification heads from CLIP's text tower (open_clip's own builder).

As in the authors' code, the head's weight is ``logit_scale.exp() * class_embeddings``
with zero bias, so the zero-shot classifier is an ordinary ``ImageClassifier`` head that
fine-tuning and souping treat like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
from torch import nn
from tqdm import tqdm

from soup_exp.models.backbones import Backbone

TEMPLATE_SETS: dict[str, Sequence[Callable[[str], str]]] = {
    "openai": open_clip.OPENAI_IMAGENET_TEMPLATES,  # the 80 prompts of the CLIP paper
    "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES,  # 7 of them: for tiny text towers
}

Templates = str | Sequence[str | Callable[[str], str]] | None


def resolve_templates(templates: Templates) -> list[Callable[[str], str]]:
    """A template-set name, or a list of ``"{}"`` format strings / callables, as callables."""
    if templates is None:
        templates = "openai"
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set '{templates}'; use one of {sorted(TEMPLATE_SETS)} or a list of '{{}}' strings")
        return list(TEMPLATE_SETS[templates])
    resolved = [t if callable(t) else str(t).format for t in templates]
    bad = [t for t in templates if not callable(t) and "{}" not in str(t)]
    if not resolved or bad:
        raise ValueError(f"templates must be non-empty and each string needs a '{{}}' placeholder; bad: {bad}")
    return resolved


# Classes per progress step: a multiple of open_clip's 10-class batches, so the batches,
# and the numbers, are those of one open_clip call over all classes.
CLASSES_PER_STEP = 100


def zeroshot_head(
    backbone: Backbone,
    classnames: Sequence[str],
    templates: Templates = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> nn.Linear:
    """Linear head ``(num_classes, feature_dim)`` from prompt-averaged text embeddings.

    ``templates=None`` uses the backbone's configured set (``model.zeroshot_templates``,
    the 80 OpenAI templates unless a tiny text tower asks for fewer). ``progress``: a
    labelled progress bar (default: when there are more than 100 classes).
    """
    model, tokenizer = backbone.clip_model, backbone.tokenizer
    if model is None or tokenizer is None:
        raise ValueError(
            f"{backbone.model_id} has no text tower, so no zero-shot head can be built; "
            "use train.head_init=lp (a linear probe on frozen features) instead."
        )
    chosen = resolve_templates(backbone.zeroshot_templates if templates is None else templates)
    original_device = next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    try:
        names = list(classnames)
        steps = [names[i:i + CLASSES_PER_STEP] for i in range(0, len(names), CLASSES_PER_STEP)]
        show = len(names) > CLASSES_PER_STEP if progress is None else progress
        bar = tqdm(steps, desc=f"zero-shot head: {len(names)} classes x {len(chosen)} prompts",
                   unit="x100 classes", disable=not show)
        weights = torch.cat([open_clip.build_zero_shot_classifier(
            model, tokenizer, classnames=step, templates=chosen, device=device) for step in bar], dim=1)
        logit_scale = model.logit_scale.detach().exp()
    finally:
        model.to(original_device).train(was_training)
    head = nn.Linear(weights.shape[0], weights.shape[1])
    with torch.no_grad():
        head.weight.copy_((logit_scale * weights.T).float().cpu())
        head.bias.zero_()
    return head
