"""How far apart are the soup arithmetics? The authors' (``arithmetic=authors``) against
soup-exp's sum-then-divide (``arithmetic=sum``, fp32 and fp64 accumulators).

N ingredients shaped like the release (default 72 x ViT-B/32 image classifiers, 1000-way
head) are made on the fly from one randomly initialised model plus per-ingredient
perturbations (1 % of each tensor's spread, rolled copies of two noise tensors per key, so
nothing but the base is held in memory), then souped through the library:

  * uniform soup of all N: each arithmetic against the fp64 sum, max |difference| of the
    weights, share of elements that differ, and top-1 flips of the soups' predictions on
    random images;
  * greedy soup arithmetic (the authors' running average over K ingredients in order)
    against the fp32 sum of the same K.

    python scripts/measure_soup_arithmetic.py                      # 72 x ViT-B/32, ~5 min on 2 cores
    python scripts/measure_soup_arithmetic.py --n 12 --model soup-tiny-vit   # seconds
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

import torch


def build_base(model: str, classes: int, seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    import open_clip

    import soup_exp.models  # noqa: F401  registers the project's model configs
    from soup_exp.models import ImageClassifier

    torch.manual_seed(seed)
    clip = open_clip.create_model(model, pretrained=None, force_quick_gelu=model == "ViT-B-32")
    classifier = ImageClassifier(clip.visual, torch.nn.Linear(clip.visual.output_dim, classes)).eval()
    return classifier, {k: v.detach().clone() for k, v in classifier.state_dict().items()}


class PerturbedSource:
    """Ingredient ``index``: ``base + 0.01 * spread * (a * roll(n1, s) + b * roll(n2, t))``."""

    def __init__(self, base: dict[str, torch.Tensor], noise: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 index: int):
        self.base, self.noise, self.index = base, noise, index

    def tensor_keys(self) -> list[str]:
        return list(self.base)

    def spec(self, key: str):
        return self.base[key].dtype, tuple(self.base[key].shape)

    def get(self, key: str) -> torch.Tensor:
        base = self.base[key]
        g = torch.Generator().manual_seed(self.index * 1_000_003 + zlib.crc32(key.encode()))
        a, b = torch.randn(2, generator=g).tolist()
        shift = int(torch.randint(0, max(base.numel(), 1), (2,), generator=g)[0])
        n1, n2 = self.noise[key]
        spread = float(base.std()) if base.numel() > 1 else 0.02
        noise = a * n1.roll(shift) + b * n2.roll(-shift)
        return base + (0.01 * spread) * noise.view_as(base)

    def iter_tensors(self, keys=None):
        for key in keys if keys is not None else self.tensor_keys():
            yield key, self.get(key)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.base.values())


def ingredients(base: dict[str, torch.Tensor], n: int, seed: int):
    from soup_exp.soups.ingredients import LazyWeights

    g = torch.Generator().manual_seed(seed)
    noise = {k: (torch.randn(v.numel(), generator=g), torch.randn(v.numel(), generator=g)) for k, v in base.items()}
    return [LazyWeights(f"model_{i}", PerturbedSource(base, noise, i), check_finite=False) for i in range(n)]


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    max_abs, max_rel, differ, total = 0.0, 0.0, 0, 0
    for key in a:
        x, y = a[key].double(), b[key].double()
        d = (x - y).abs()
        max_abs = max(max_abs, float(d.max()))
        max_rel = max(max_rel, float((d / y.abs().clamp_min(1e-12)).max()))
        differ += int((a[key] != b[key]).sum())
        total += a[key].numel()
    return {"max_abs": max_abs, "max_rel": max_rel, "elements_differing": differ / total}


@torch.no_grad()
def predictions(model: torch.nn.Module, state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return torch.cat([model(chunk) for chunk in images.split(32)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=72, help="ingredients in the uniform soup")
    parser.add_argument("--k", type=int, default=5, help="ingredients in the greedy running average")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=256, help="random images for prediction flips")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from soup_exp.soups import uniform_soup
    from soup_exp.soups.streaming import running_average, weighted_sum

    torch.set_grad_enabled(False)
    start = time.time()
    model, base = build_base(args.model, args.classes, args.seed)
    ings = ingredients(base, args.n, args.seed)
    soups = {
        "authors": uniform_soup(ings, arithmetic="authors"),
        "sum_fp32": uniform_soup(ings, arithmetic="sum"),
        "sum_fp64": uniform_soup(ings, arithmetic="sum", accumulate_dtype=torch.float64),
    }
    size = model.image_encoder.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    images = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1))
    logits = {name: predictions(model, state, images) for name, state in soups.items()}
    top1 = {name: value.argmax(1) for name, value in logits.items()}
    report = {"model": args.model, "n": args.n, "images": args.images, "uniform": {}}
    for name in ("authors", "sum_fp32"):
        report["uniform"][f"{name}_vs_sum_fp64"] = compare(soups[name], soups["sum_fp64"])
    report["uniform"]["authors_vs_sum_fp32"] = {
        **compare(soups["authors"], soups["sum_fp32"]),
        "max_abs_logit": float((logits["authors"] - logits["sum_fp32"]).abs().max()),
        "top1_flips": int((top1["authors"] != top1["sum_fp32"]).sum()),
    }
    report["uniform"]["top1_flips_vs_sum_fp64"] = {n: int((top1[n] != top1["sum_fp64"]).sum())
                                                  for n in ("authors", "sum_fp32")}
    chosen = ings[: args.k]
    average = running_average(chosen)
    summed = weighted_sum(chosen, [1.0] * len(chosen))
    summed = {k: v / len(chosen) if v.is_floating_point() else v for k, v in summed.items()}
    greedy_logits = [predictions(model, s, images) for s in (average, summed)]
    report["greedy_running_average_vs_sum_fp32"] = {
        "k": args.k, **compare(average, summed),
        "top1_flips": int((greedy_logits[0].argmax(1) != greedy_logits[1].argmax(1)).sum()),
    }
    report["seconds"] = round(time.time() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
