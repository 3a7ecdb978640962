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
        # 10_adaclip_zero_shot: train on some synthetic categories, test on the others.
        "train_datasets": ["synthetic"],
        "train_categories": ["brushed", "grain", "hexnut", "tile"],
        "test_dataset": "synthetic",
        "test_categories": ["checker", "pill", "washer", "weave"],
        "adaclip_backbone": "clipad-tiny-ViT",
        "adaclip_pretrained": None,
        "adaclip_image_size": 128,
        "adaclip_layers": [2, 4, 6, 8],
        "adaclip_epochs": 5,
        "adaclip_batch_size": 4,
        "adaclip_learning_rate": 0.001,  # the paper's 0.01 overshoots on the tiny random-init model
        "hsf_clusters": 5,  # 5·K = 25 of the 256 patches at 128 px
        "aprilgan_backbone": "clipad-tiny-ViT",
        "aprilgan_pretrained": None,
        "aprilgan_image_size": 128,
        "aprilgan_layers": [2, 4, 6, 8],
        "aprilgan_epochs": 5,
        "aprilgan_batch_size": 8,
        "winclip_backbone": "clipad-tiny-ViT",
        "winclip_pretrained": None,
        "winclip_image_size": 128,
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
        # 10_adaclip_zero_shot: AdaCLIP §5.1 — train on MVTec AD + ClinicDB, test on unseen data
        # (train on VisA + ColonDB when testing MVTec AD or ClinicDB).
        "train_datasets": ["mvtec", "clinicdb"],
        "train_categories": None,
        "test_dataset": "visa",
        "test_categories": None,
        "adaclip_backbone": "ViT-L-14-336",
        "adaclip_pretrained": "openai",
        "adaclip_image_size": 518,
        "adaclip_layers": [6, 12, 18, 24],
        "adaclip_epochs": 5,
        "adaclip_batch_size": 1,
        "adaclip_learning_rate": 0.01,
        "hsf_clusters": 20,
        "aprilgan_backbone": "ViT-L-14-336",
        "aprilgan_pretrained": "openai",
        "aprilgan_image_size": 518,
        "aprilgan_layers": [6, 12, 18, 24],
        "aprilgan_epochs": 3,
        "aprilgan_batch_size": 64,
        "winclip_backbone": "ViT-B-16-plus-240",
        "winclip_pretrained": "laion400m_e31",
        "winclip_image_size": 240,
    },
}


def profile_parameters(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return dict(PROFILES[profile])
