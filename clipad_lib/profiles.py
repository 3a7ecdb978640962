"""Profiles are sets of notebook parameters; they never fork the code path.

``smoke``: the synthetic embedded dataset, a tiny random-init CLIP (same code path as the
paper backbone), CPU, a few minutes for every notebook. ``paper``: the real datasets under
``CLIPAD_DATA`` and the paper backbones on a GPU runner.
"""
from __future__ import annotations

PROFILES: dict[str, dict] = {
    "smoke": {
        "profile": "smoke",
        "dataset": "synthetic",
        "data_root": None,
        "device": "cpu",
        "backbone": "clipad-tiny-ViT",
        "pretrained": None,
        "image_size": 128,
        "layers": [2, 4, 6, 8],
        "shots": 4,
        "seeds": [0, 1, 2],
        "batch_size": 16,
    },
    "paper": {
        "profile": "paper",
        "dataset": "mvtec",
        "data_root": None,  # $CLIPAD_DATA/<manifest default_dirname>
        "device": "cuda",
        "backbone": "ViT-L-14-336",
        "pretrained": "openai",
        "image_size": 518,
        "layers": [6, 12, 18, 24],
        "shots": 4,
        "seeds": [0, 1, 2, 3, 4],
        "batch_size": 8,
    },
}


def profile_parameters(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return dict(PROFILES[profile])
