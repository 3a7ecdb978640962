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
        # 20/21_clip_fsac_*: the tiny CLIP at 64 px; VisA's §IV-A3 settings on the synthetic data.
        "fsac_datasets": ["synthetic"],
        "fsac_categories": None,
        "fsac_backbone": "clipad-tiny-ViT",
        "fsac_pretrained": None,
        "fsac_image_size": 64,
        "fsac_shots": [1, 2, 4, 8],
        "fsac_seeds": [0, 1],
        "fsac_epochs": 100,
        "fsac_anomalies_per_image": 20,
        "fsac_learning_rates": [0.001, 0.0002],  # the paper's 5e-4 / 1e-4 barely move the random-init heads
        "fsac_ablation_shots": [1, 4],
        "fsac_ablation_seeds": [0],
        "fsac_ablation_categories": ["checker", "hexnut", "tile", "washer"],
        "fsac_patchcore_layers": [2, 4, 6, 8],
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
        # 20/21_clip_fsac_*: §IV-A3 — OpenCLIP ViT-B-16-plus-240 (LAION-400M), 100 epochs, five seeds.
        "fsac_datasets": ["visa", "mvtec"],
        "fsac_categories": None,
        "fsac_backbone": "ViT-B-16-plus-240",
        "fsac_pretrained": "laion400m_e31",
        "fsac_image_size": 240,
        "fsac_shots": [1, 2, 4, 8],
        "fsac_seeds": [0, 1, 2, 3, 4],
        "fsac_epochs": 100,
        "fsac_anomalies_per_image": 100,
        "fsac_learning_rates": [0.0005, 0.0001],
        "fsac_ablation_shots": [1, 2, 4, 8],
        "fsac_ablation_seeds": [0, 1, 2, 3, 4],
        "fsac_ablation_categories": None,
        "fsac_patchcore_layers": [3, 6, 9, 12],
    },
}


def profile_parameters(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return dict(PROFILES[profile])
