"""How far each fidelity switch moves the numbers, measured on random weights (CPU).

    python scripts/fidelity_departures.py                 # the papers' backbones and resolutions
    python scripts/fidelity_departures.py --quick         # ViT-B-16 at 320 px (a minute)

For each switch where the official code bases differ from each other (positional-embedding
resize, activation, smoothing boundary, HSF k-means, WinCLIP's text ensemble) it prints the max
|Δ| between the two settings on the same random weights and the same images: the size of the
departure each default closes. A random CLIP is built at the architecture's native resolution
(seeded), saved, and loaded at the paper resolution, so the positional embedding really is resized.
The HSF spread is measured on the synthetic smoke set with the smoke AdaCLIP (tiny CLIP, 128 px,
K = 5): the official recipe's scores across scikit-learn random states, and the batched k-means
against them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipad_lib.backbones import architecture, build_clip  # noqa: E402
from clipad_lib.data import load_dataset  # noqa: E402
from clipad_lib.methods import (AdaCLIPConfig, AdaCLIPDetector, AprilGANConfig, AprilGANDetector,  # noqa: E402
                                WinCLIPConfig, WinCLIPDetector)


def native_checkpoint(model_name: str, folder: Path) -> Path:
    """A seeded random CLIP at the architecture's own resolution, saved as an open_clip state dict."""
    path = folder / f"{model_name}-random.pt"
    torch.save(build_clip(model_name, init_seed=0).model.state_dict(), path)
    return path


def max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def report(name: str, **deltas: float) -> None:
    print(f"{name:<44}" + "  ".join(f"{k} {v:.2e}" for k, v in deltas.items()), flush=True)


def adaclip_departures(model_name: str, size: int, layers: tuple[int, ...], images: torch.Tensor, folder: Path):
    checkpoint = native_checkpoint(model_name, folder)
    base = dict(backbone=model_name, pretrained=str(checkpoint), image_size=size, layers=layers)
    outputs = {}
    for antialias in (False, True):
        detector = AdaCLIPDetector(AdaCLIPConfig(**base, pos_embed_antialias=antialias))
        with torch.no_grad():
            prediction = detector.predict(images, ["bottle"] * len(images))
        outputs[antialias] = (detector, prediction)
    (official, ours_old), (new, old) = (outputs[False][0], outputs[True][0]), (outputs[False][1], outputs[True][1])
    report(f"AdaCLIP pos-embed {model_name}@{size}",
           pos_embed=max_delta(official.backbone.model.visual.positional_embedding,
                               ours_old.backbone.model.visual.positional_embedding),
           map=max_delta(new.anomaly_maps, old.anomaly_maps), score=max_delta(new.image_scores, old.image_scores))
    mirror = AdaCLIPDetector(AdaCLIPConfig(**base, smoothing_boundary="mirror"), backbone=official.backbone)
    mirror.model.load_state_dict(official.model.state_dict())
    with torch.no_grad():
        mirrored = mirror.predict(images, ["bottle"] * len(images))
    border = (new.anomaly_maps - mirrored.anomaly_maps).abs()
    report("AdaCLIP smoothing reflect/mirror", map=float(border.max()), interior=float(border[:, 16:-16, 16:-16].max()))


def aprilgan_departure(model_name: str, size: int, layers: tuple[int, ...], images: torch.Tensor, folder: Path):
    checkpoint = native_checkpoint(model_name, folder)
    predictions = {}
    for quick_gelu in (False, True):
        config = AprilGANConfig(backbone=model_name, pretrained=str(checkpoint), image_size=size, layers=layers,
                                few_shot_layers=layers, quick_gelu=quick_gelu)
        detector = AprilGANDetector(config)
        with torch.no_grad():
            predictions[quick_gelu] = detector.predict(images, ["bottle"] * len(images))
    report(f"APRIL-GAN GELU/QuickGELU {model_name}@{size}",
           map=max_delta(predictions[False].anomaly_maps, predictions[True].anomaly_maps),
           score=max_delta(predictions[False].image_scores, predictions[True].image_scores))


def winclip_departure(images_at, folder: Path):
    model_name = "ViT-B-16-plus-240"
    checkpoint = native_checkpoint(model_name, folder)
    backbone = build_clip(model_name, pretrained=str(checkpoint))
    images = images_at(backbone.image_size)
    predictions = {}
    for ensemble in ("paper", "anomalib"):
        detector = WinCLIPDetector(WinCLIPConfig(pretrained=str(checkpoint), text_ensemble=ensemble), backbone=backbone)
        predictions[ensemble] = detector.predict(images, ["bottle"] * len(images))
    report("WinCLIP ensemble paper/anomalib",
           map=max_delta(predictions["paper"].anomaly_maps, predictions["anomalib"].anomaly_maps),
           score=max_delta(predictions["paper"].image_scores, predictions["anomalib"].image_scores))


def hsf_spread(folder: Path, states: int = 5, count: int = 48):
    test = load_dataset("synthetic", "test", categories=["pill", "washer", "weave"])
    config = AdaCLIPConfig(backbone="clipad-tiny-ViT", pretrained=None, image_size=128, layers=(2, 4, 6, 8),
                           hsf_clusters=5)
    reference = AdaCLIPDetector(config)
    checkpoint = reference.save_checkpoint(folder / "adaclip-smoke.pt")
    indices = list(range(0, len(test), max(1, len(test) // count)))[:count]
    images = torch.stack([reference.transform.image(test[i].image) for i in indices])
    names = [test.records[i].category for i in indices]

    def scores(**changes):
        detector = AdaCLIPDetector(config.replace(**changes), backbone=reference.backbone).load_checkpoint(checkpoint)
        return detector.predict(images, names).image_scores

    official = torch.stack([scores(kmeans="sklearn", seed=s) for s in range(states)])
    batched = scores(kmeans="batched")
    spread = float((official.max(dim=0).values - official.min(dim=0).values).max())
    distance = float((batched - official.mean(dim=0)).abs().max())
    report(f"HSF k-means ({count} smoke images)", official_spread=spread, batched_vs_official_mean=distance,
           score_range=float(official.max() - official.min()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ViT-B-16 at 320 px instead of ViT-L-14-336 at 518")
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model_name, size = ("ViT-B-16", 320) if args.quick else ("ViT-L-14-336", 518)
    depth = architecture(model_name).layers
    layers = tuple(depth * i // 4 for i in range(1, 5))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(args.images, 3, 520, 520, generator=generator)

    def images_at(side: int) -> torch.Tensor:
        return torch.nn.functional.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        hsf_spread(folder)
        winclip_departure(images_at, folder)
        aprilgan_departure(model_name, size, layers, images_at(size), folder)
        adaclip_departures(model_name, size, layers, images_at(size), folder)


if __name__ == "__main__":
    main()
