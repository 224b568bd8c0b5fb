"""The results vocabulary: the keys of a result row and their labels, defined once.

They match the authors' published files, so one reader takes both. This module imports
nothing, so every layer (stages, libraries, ``utils/``) can name a result key from here.
"""

from __future__ import annotations

HELD_OUT = "ImageNet2p"  # the held-out slice of ImageNet train that greedy and learned soups select on
IMAGENET = "ImageNet"
SHIFTS = ("ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA")
AVG_SHIFTS = "avg_shifts"  # the paper's "Avg shifts": the unweighted mean over SHIFTS
ACCURACY_KEYS = (HELD_OUT, IMAGENET, *SHIFTS)

# The table's column label of each accuracy key, in the paper's order.
LABELS: dict[str, str] = {
    HELD_OUT: "Held-out",
    IMAGENET: "ImageNet",
    "ImageNetV2": "IN-V2",
    "ImageNetSketch": "IN-Sketch",
    "ImageNetR": "IN-R",
    "ObjectNet": "ObjectNet",
    "ImageNetA": "IN-A",
    AVG_SHIFTS: "Avg shifts",
}
