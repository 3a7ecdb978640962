"""Golden tests: clipad's AdaCLIP and APRIL-GAN against outputs of the OFFICIAL code.

The fixtures in tests/golden/ were written by scripts/make_golden_fixtures.py, which ran the
authors' code (commit ids in each fixture's metadata) on shared seeded random weights: clipad's
``build_clip(model, init_seed=0)`` rounded to fp16 precision, and seeded learnable tensors in the
official checkpoint layout. Here the same weights are rebuilt, loaded through clipad's own
loaders (``build_clip(pretrained=<file>)``, ``load_official_checkpoint``), and every stage is
compared in pipeline order at 1e-5; a failure names the first stage that differs.

The departure tests put a known departure back (AdaCLIP's antialiased positional-embedding
resize, APRIL-GAN's QuickGELU at a non-native size, torchvision-style 'mirror' smoothing) and
check that the comparison catches it at the right stage.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
TOLERANCE = 1e-5


def _load_script():
    spec = importlib.util.spec_from_file_location("make_golden_fixtures", ROOT / "scripts" / "make_golden_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixtures = _load_script()


class StageMismatch(AssertionError):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def compare(stages, tolerance: float = TOLERANCE) -> dict[str, float]:
    """``stages``: (name, ours, official) in pipeline order, ``ours`` a value or a callable giving
    it (so later stages are not computed once an earlier one differs). Raises
    :class:`StageMismatch` naming the first stage off by more than ``tolerance``."""
    deltas = {}
    for name, ours, official in stages:
        ours = ours() if callable(ours) else ours
        ours = np.asarray(ours.detach().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
        official = np.asarray(official, dtype=np.float64)
        done = ", ".join(f"{k} {v:.2g}" for k, v in deltas.items())
        if ours.shape != official.shape:
            raise StageMismatch(name, f"first differing stage: {name!r}: shape {ours.shape} vs the official "
                                      f"{official.shape} (stages that matched: {done or 'none'})")
        delta = float(np.abs(ours - official).max()) if ours.size else 0.0
        deltas[name] = delta
        if not delta <= tolerance:
            raise StageMismatch(name, f"first differing stage: {name!r}: max |delta| = {delta:.3g} > {tolerance:g} "
                                      f"(stages that matched, max |delta|: {done or 'none'})")
    print("max |delta| per stage: " + ", ".join(f"{k} {v:.2g}" for k, v in deltas.items()))
    return deltas


def _fixture(name: str) -> tuple[dict, dict]:
    data = dict(np.load(GOLDEN / f"{name}.npz"))
    return json.loads(str(data.pop("meta"))), data


@pytest.fixture(scope="module")
def golden():
    return {name: _fixture(name) for name in ("adaclip", "aprilgan")}


@pytest.fixture(scope="module")
def weights_file(golden, tmp_path_factory) -> Path:
    """The shared CLIP weights, rebuilt as the script built them and checked against its digest."""
    meta, _ = golden["adaclip"]
    for other, _ in golden.values():
        assert (other["model"], other["init_seed"], other["clip_sha256"]) == \
               (meta["model"], meta["init_seed"], meta["clip_sha256"]), "the fixtures disagree on the CLIP weights"
    assert meta["rounding"] == "fp16"
    state = fixtures.clip_state_dict(meta["model"], meta["init_seed"])
    digest = fixtures.state_digest(state)
    if digest != meta["clip_sha256"]:
        raise StageMismatch("shared_weights", "first differing stage: 'shared_weights': build_clip("
                            f"{meta['model']!r}, init_seed={meta['init_seed']}) rounded to fp16 is not the "
                            "fixtures' CLIP (open_clip's random init changed?)")
    path = tmp_path_factory.mktemp("golden") / "clip.pt"
    torch.save(state, path)
    return path


def _official_checkpoint(meta: dict, tmp_path: Path) -> Path:
    checkpoint = fixtures.official_checkpoint(meta["method"], meta["checkpoint_seed"])
    flat = checkpoint.get("trainable_linearlayer", checkpoint)
    if fixtures.state_digest(flat) != meta["checkpoint_sha256"]:
        raise StageMismatch("learnable_weights", "first differing stage: 'learnable_weights': the seeded "
                            "official-layout checkpoint does not rebuild to the fixture's digest")
    path = tmp_path / f"{meta['method']}_official.pth"
    torch.save(checkpoint, path)
    return path


def _images(meta: dict, data: dict) -> torch.Tensor:
    assert tuple(meta["mean"]) == fixtures.MEAN and tuple(meta["std"]) == fixtures.STD
    return fixtures.normalize_images(data["images"])


def _gelu(backbone) -> list[str]:
    return sorted({type(m).__name__ for m in backbone.model.visual.modules() if "GELU" in type(m).__name__})


# -- AdaCLIP ----------------------------------------------------------------------------------

def _adaclip(meta, weights_file, tmp_path, **overrides):
    from clipad_lib.methods.adaclip import AdaCLIPConfig, AdaCLIPDetector

    config = AdaCLIPConfig(backbone=meta["model"], pretrained=str(weights_file), image_size=meta["image_size"],
                           layers=tuple(meta["layers"]), prompt_length=meta["prompt_length"],
                           prompt_depth=meta["prompt_depth"], hsf_clusters=meta["hsf_clusters"],
                           gaussian_sigma=meta["sigma"], kmeans="sklearn", **overrides)
    return AdaCLIPDetector(config).load_official_checkpoint(_official_checkpoint(meta, tmp_path))


@pytest.fixture
def official_labels(golden, monkeypatch):
    """Feed the official run's k-means labels to clipad's HSF (its k-means has no seed to match)."""
    import clipad_lib.methods.adaclip as adaclip

    labels = torch.as_tensor(golden["adaclip"][1]["hsf_labels"])

    def given(features, clusters, seed):
        assert tuple(features.shape[:2]) == tuple(labels.shape), "HSF selected a different number of patches"
        return labels.to(features.device)

    monkeypatch.setattr(adaclip, "sklearn_kmeans_labels", given)


def adaclip_stages(detector, meta, data):
    from clipad_lib.methods.adaclip import hybrid_semantic_fusion
    from clipad_lib.methods.base import upsample_patch_logits

    model, images, names = detector.model, _images(meta, data), meta["class_names"]
    config = detector.config
    size = images.shape[-1]
    cache: dict = {}

    def forward():
        if not cache:
            with torch.no_grad():
                source = model.prompted.frozen_image_embedding(images)
                pooled, tokens = model.prompted.encode_image(images, config.layers, source)
                cache.update(source=source, tokens=tokens, output=model(images, names),
                             embedding=F.normalize(model.cls_projection(pooled), dim=-1))
        return cache

    def text():
        with torch.no_grad():
            return model._text(names, forward()["source"])

    def hsf():
        with torch.no_grad():
            return hybrid_semantic_fusion(model._project_patches(forward()["tokens"]), forward()["output"]["layer_logits"],
                                          config.hsf_clusters, config.hsf_top_factor, config.hsf_centroids,
                                          config.seed, config.kmeans)

    def raw_map():
        logits = torch.stack([upsample_patch_logits(l, size) for l in forward()["output"]["layer_logits"]]).mean(0)
        return torch.softmax(logits, dim=1)[:, 1]

    def predicted():
        if "prediction" not in cache:
            cache["prediction"] = detector.predict(images, names)
        return cache["prediction"]

    return [
        ("positional_embedding", lambda: detector.backbone.model.visual.positional_embedding, data["positional_embedding"]),
        ("activation", lambda: [float(n == "QuickGELU") for n in _gelu(detector.backbone)], [0.0]),  # exact GELU
        ("text_embeddings", text, data["text"]),
        ("image_embedding", lambda: forward()["embedding"], data["image_embedding"]),
        *[(f"layer_logits[{layer}]/100", (lambda j=j: forward()["output"]["layer_logits"][j] / 100.0),
           data[f"layer_logits_{j}"] / 100.0) for j, layer in enumerate(meta["layers"])],
        ("hsf_embedding", hsf, data["hsf_embedding"]),
        ("image_score", lambda: forward()["output"]["image_probabilities"][:, 1], data["image_score"]),
        ("anomaly_map_before_smoothing", raw_map, data["map_raw"]),
        ("anomaly_map_smoothed", lambda: predicted().anomaly_maps, data["map_smoothed"]),
        ("predicted_image_score", lambda: predicted().image_scores, data["image_score"]),
    ]


def test_adaclip_matches_official(golden, weights_file, tmp_path, official_labels):
    meta, data = golden["adaclip"]
    compare(adaclip_stages(_adaclip(meta, weights_file, tmp_path), meta, data))


def test_adaclip_departures_are_caught(golden, weights_file, tmp_path):
    from clipad_lib.methods.base import gaussian_smooth

    meta, data = golden["adaclip"]
    detector = _adaclip(meta, weights_file, tmp_path, pos_embed_antialias=True)
    with pytest.raises(StageMismatch) as caught:
        compare(adaclip_stages(detector, meta, data)[:1])
    assert caught.value.stage == "positional_embedding"
    # the official smoothing is scipy's 'reflect': torchvision's 'mirror' differs near the border
    raw = torch.from_numpy(data["map_raw"])
    assert compare([("smoothing", gaussian_smooth(raw, meta["sigma"], "reflect"), data["map_smoothed"])])
    with pytest.raises(StageMismatch):
        compare([("smoothing", gaussian_smooth(raw, meta["sigma"], "mirror"), data["map_smoothed"])])


# -- APRIL-GAN --------------------------------------------------------------------------------

def _aprilgan(meta, weights_file, tmp_path, **overrides):
    from clipad_lib.methods.aprilgan import AprilGANConfig, AprilGANDetector

    layers = tuple(meta["layers"])
    config = AprilGANConfig(backbone=meta["model"], pretrained=str(weights_file), image_size=meta["image_size"],
                            layers=layers, few_shot_layers=layers, **overrides)
    return AprilGANDetector(config).load_official_checkpoint(_official_checkpoint(meta, tmp_path))


def aprilgan_stages(detector, meta, data):
    images, names = _images(meta, data), meta["class_names"]
    cache: dict = {}

    def text():
        if "text" not in cache:
            with torch.no_grad():
                cache["text"] = detector._text_embeddings(names)
        return cache["text"]

    def logits():
        if "logits" not in cache:
            with torch.no_grad():
                tokens, _ = detector.backbone.patch_tokens(images, detector.config.layers)
                cache["logits"] = detector._layer_logits(tokens, text())
        return cache["logits"]

    def predicted():
        if "prediction" not in cache:
            cache["prediction"] = detector.predict(images, names)
        return cache["prediction"]

    return [
        ("positional_embedding", lambda: detector.backbone.model.visual.positional_embedding, data["positional_embedding"]),
        ("activation", lambda: [float(n == "QuickGELU") for n in _gelu(detector.backbone)],
         [float(n == "QuickGELU") for n in meta["gelu"]]),
        ("text_embeddings", text, data["text"]),
        *[(f"layer_logits[{layer}]/100", (lambda j=j: logits()[j] / 100.0), data[f"layer_logits_{j}"] / 100.0)
          for j, layer in enumerate(meta["layers"])],
        ("anomaly_map", lambda: predicted().anomaly_maps, data["map"]),  # its test.py does not smooth
        ("image_score", lambda: predicted().image_scores, data["image_score"]),
    ]


def test_aprilgan_matches_official(golden, weights_file, tmp_path):
    meta, data = golden["aprilgan"]
    assert meta["gelu"] == ["GELU"], "at a non-native size the official code builds exact GELU"
    compare(aprilgan_stages(_aprilgan(meta, weights_file, tmp_path), meta, data))


def test_aprilgan_departures_are_caught(golden, weights_file, tmp_path):
    meta, data = golden["aprilgan"]
    for overrides, stage in (({"quick_gelu": True}, "activation"), ({"pos_embed_antialias": False}, "positional_embedding")):
        stages = aprilgan_stages(_aprilgan(meta, weights_file, tmp_path, **overrides), meta, data)
        with pytest.raises(StageMismatch) as caught:
            compare(stages[:2])
        assert caught.value.stage == stage, overrides
