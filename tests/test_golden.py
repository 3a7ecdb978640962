"""Golden tests: clipad's AdaCLIP, APRIL-GAN, AnomalyCLIP and PatchCore against outputs of the
OFFICIAL code, and clipad's WinCLIP (text_ensemble='anomalib') against anomalib's WinClipModel.

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

import functools
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
    return _rebuilt_clip(meta, tmp_path_factory.mktemp("golden"))


def _rebuilt_clip(meta: dict, folder: Path) -> Path:
    """``build_clip(meta model, init_seed)`` rounded to fp16 as the script made it, checked against
    the fixture's digest and saved to ``folder/clip.pt``."""
    assert meta["rounding"] == "fp16"
    state = fixtures.clip_state_dict(meta["model"], meta["init_seed"])
    if fixtures.state_digest(state) != meta["clip_sha256"]:
        raise StageMismatch("shared_weights", "first differing stage: 'shared_weights': build_clip("
                            f"{meta['model']!r}, init_seed={meta['init_seed']}) rounded to fp16 is not the "
                            "fixture's CLIP (open_clip's random init changed?)")
    path = folder / "clip.pt"
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


def _backbone_stages(detector, data, official_activations):
    """The first two stages of every comparison: the resized positional embedding and the activation."""
    return [
        ("positional_embedding", lambda: detector.backbone.model.visual.positional_embedding, data["positional_embedding"]),
        ("activation", lambda: [float(n == "QuickGELU") for n in _gelu(detector.backbone)],
         [float(n == "QuickGELU") for n in official_activations]),
    ]


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

    predicted = functools.cache(lambda: detector.predict(images, names))

    return [
        *_backbone_stages(detector, data, ["GELU"]),  # exact GELU
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

    @functools.cache
    def text():
        with torch.no_grad():
            return detector._text_embeddings(names)

    @functools.cache
    def logits():
        with torch.no_grad():
            tokens, _ = detector.backbone.patch_tokens(images, detector.config.layers)
            return detector._layer_logits(tokens, text())

    predicted = functools.cache(lambda: detector.predict(images, names))

    return [
        *_backbone_stages(detector, data, meta["gelu"]),
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


# -- WinCLIP (reference: anomalib's WinClipModel) ---------------------------------------------
#
# tests/golden/winclip.npz was written by anomalib's WinClipModel (version in its metadata) under an
# open_clip older than 2.26.1, on build_clip("ViT-B-16-plus-240", init_seed=0) rounded to fp16. Its
# embedding stages hold a fixed subset of windows / patches (fixtures.winclip_subset) and its
# full-size maps a fixed set of rows and columns (fixtures.winclip_pixels); the window scores and the
# 15x15 patch-grid maps are whole. anomalib's patch embeddings are ln_post outputs, not projected:
# the same quantity as the patch tokens of WinCLIPDetector.encode.

@pytest.fixture(scope="module")
def winclip_golden():
    return _fixture("winclip")


@pytest.fixture(scope="module")
def winclip_detector(winclip_golden, tmp_path_factory):
    """clipad's WinCLIP (text_ensemble='anomalib') on the rebuilt shared weights, loaded from a file.

    To keep the module fast on a few CPU cores, its backbone's ``encode_text`` is memoized per
    sentence (the two ensembles share 220 of their sentences; each sentence is encoded once, by the
    backbone's own ``encode_text``), and ``shared`` carries the test images' ``encode`` outputs
    between the tests (``encode`` does not depend on the text ensemble)."""
    from clipad_lib.methods.winclip import WinCLIPConfig, WinCLIPDetector

    meta, data = winclip_golden
    path = _rebuilt_clip(meta, tmp_path_factory.mktemp("winclip"))
    config = WinCLIPConfig(backbone=meta["model"], pretrained=str(path), image_size=meta["image_size"],
                           scales=tuple(meta["scales"]), text_ensemble="anomalib")
    detector = WinCLIPDetector(config)
    backbone, memo = detector.backbone, {}
    encode_text = backbone.encode_text

    def memoized(prompts, normalize=True):
        missing = list(dict.fromkeys(p for p in prompts if p not in memo))
        if missing:
            memo.update(zip(missing, encode_text(missing, normalize=False)))
        out = torch.stack([memo[p] for p in prompts])
        return F.normalize(out, dim=-1) if normalize else out

    backbone.encode_text = memoized
    detector.shared = {"images": _images(meta, data)}
    return detector


def _winclip(base, **overrides):
    """A fresh WinCLIPDetector (no references) sharing ``base``'s backbone and ``shared``."""
    from dataclasses import replace

    from clipad_lib.methods.winclip import WinCLIPDetector

    detector = WinCLIPDetector(replace(base.config, **overrides), backbone=base.backbone)
    detector.shared = base.shared
    return detector


def _grid_and_prediction(detector, images, names, encoded):
    """predict(), and the patch-grid score map it upsamples (captured at its F.interpolate call);
    its ``encode(images)`` answers ``encoded`` (the stages checked it already)."""
    captured = []
    interpolate, encode = F.interpolate, detector.encode

    def capture(grid, *args, **kwargs):
        assert kwargs == {"size": images.shape[-2:], "mode": "bilinear", "align_corners": False}, kwargs
        captured.append(grid[:, 0].clone())
        return interpolate(grid, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F, "interpolate", capture)
        patch.setattr(detector, "encode", lambda x: encoded if x is images else encode(x))
        prediction = detector.predict(images, names)
    assert len(captured) == 1
    return captured[0], prediction


def winclip_stages(detector, meta, data, few_shot: bool = False):
    """WinCLIP's stages in pipeline order; with ``few_shot`` the WinCLIP+ stages after ``fit`` on the
    fixture's references (``detector`` must come without references; the zero-shot stages run first)."""
    from clipad_lib.methods import FitData
    from clipad_lib.methods.text_prompts import frozen_text_embeddings
    from clipad_lib.methods.winclip import TEXT_ENSEMBLES, harmonic_aggregation

    shared, name = detector.shared, meta["class_name"]
    images = shared["images"]
    names = [name] * len(images)
    patches = fixtures.winclip_subset(detector.grid ** 2)
    rows = torch.as_tensor(fixtures.winclip_pixels(meta["image_size"], meta["pixel_stride"]))
    cache: dict = {}

    def encoded():
        if "encoded" not in shared:
            shared["encoded"] = detector.encode(images)
        return shared["encoded"]

    def text():
        if "text" not in cache:
            ensemble = TEXT_ENSEMBLES[detector.config.text_ensemble]
            cache["text"] = frozen_text_embeddings(detector.backbone, ensemble, name)[None].expand(len(images), -1, -1)
        return cache["text"]

    def window_scores(j):
        with torch.no_grad():
            return detector._abnormal_probability(encoded()[2][j], text())

    def zero_shot():
        if "zero_shot" not in cache:
            assert detector.reference is None
            cache["zero_shot"] = _grid_and_prediction(detector, images, names, encoded())
        return cache["zero_shot"]

    def few():
        if "few_shot" not in cache:
            zero_shot()
            detector.fit(FitData(reference_images=fixtures.normalize_images(data["references"])))
            cache["few_shot"] = _grid_and_prediction(detector, images, names, encoded())
        return cache["few_shot"]

    def window(j):
        return lambda: encoded()[2][j][:, fixtures.winclip_subset(encoded()[2][j].shape[1])]

    stages = [
        ("text_embeddings", lambda: text()[0], F.normalize(torch.from_numpy(data["text_raw"]), dim=-1)),
        ("image_embedding", lambda: encoded()[0], data["image_embedding"]),
        ("patch_embeddings", lambda: encoded()[1][:, patches], data["patch_embeddings"]),  # ln_post, unprojected
        *[(f"window_embeddings[{scale}]", window(j), data[f"window_embeddings_{scale}"])
          for j, scale in enumerate(meta["scales"])],
        ("zero_shot_image_score", lambda: detector._abnormal_probability(encoded()[0], text()),
         data["zero_shot_image_score"]),
        *[(f"window_scores[{scale}]", (lambda j=j: window_scores(j)), data[f"window_scores_{scale}"])
          for j, scale in enumerate(meta["scales"])],
        *[(f"scale_map[{scale}]", (lambda j=j: harmonic_aggregation(window_scores(j), detector.windows[j],
                                                                     detector.grid)), data[f"scale_map_{scale}"])
          for j, scale in enumerate(meta["scales"])],
        ("zero_shot_score_map", lambda: zero_shot()[0], data["zero_shot_score_map"]),
        ("zero_shot_anomaly_map", lambda: zero_shot()[1].anomaly_maps[:, rows][:, :, rows], data["zero_shot_map"]),
        ("zero_shot_image_score_predicted", lambda: zero_shot()[1].image_scores, data["zero_shot_score"]),
    ]
    if few_shot:
        stages += [
            ("few_shot_score_map", lambda: few()[0], data["few_shot_score_map"]),
            # the few-shot part alone: 2 x (zero-shot + few-shot) / 2 - zero-shot
            ("few_shot_association_map", lambda: 2 * few()[0] - zero_shot()[0], data["few_shot_map_grid"]),
            ("few_shot_anomaly_map", lambda: few()[1].anomaly_maps[:, rows][:, :, rows], data["few_shot_map"]),
            ("few_shot_image_score", lambda: few()[1].image_scores, data["few_shot_score"]),
        ]
    return stages


def test_winclip_matches_anomalib(winclip_golden, winclip_detector):
    """Zero-shot stages, then WinCLIP+ (k-shot references) on a fresh detector."""
    meta, data = winclip_golden
    assert meta["load_state_dict"] == "<All keys matched successfully>"  # strict load under anomalib's open_clip
    assert winclip_detector.config.text_ensemble == "anomalib"
    assert len(data["references"]) == meta["k_shot"]
    compare(winclip_stages(_winclip(winclip_detector), meta, data, few_shot=True))


def test_winclip_paper_ensemble_departs_from_anomalib(winclip_golden, winclip_detector):
    """The default text_ensemble='paper' (22 templates, sentences normalized before the mean) is not
    anomalib's: the comparison stops at the text stage, and the final map differs too."""
    meta, data = winclip_golden
    stages = winclip_stages(_winclip(winclip_detector, text_ensemble="paper"), meta, data)
    with pytest.raises(StageMismatch) as caught:
        compare(stages)
    assert caught.value.stage == "text_embeddings"
    final = [stage for stage in stages if stage[0] == "zero_shot_anomaly_map"]
    with pytest.raises(StageMismatch) as caught:
        compare(final)
    assert caught.value.stage == "zero_shot_anomaly_map"


# -- AnomalyCLIP (reference: the official zqhang/AnomalyCLIP code) ------------------------------
#
# tests/golden/anomalyclip.npz: the official prompt learner, text encoder and DPAM image encoder on
# the shared ViT-B-16 weights at its native 224 px (no positional-embedding resize on either side),
# the official-layout checkpoint drawn from ``checkpoint_seed`` (its frozen buffers made from the
# shared weights), the per-image inference of its test.py (commit and patches in the metadata).

@pytest.fixture(scope="module")
def anomalyclip_golden():
    return _fixture("anomalyclip")


@pytest.fixture(scope="module")
def anomalyclip_files(anomalyclip_golden, tmp_path_factory) -> tuple[Path, Path]:
    """(the shared CLIP weights, the official-layout checkpoint), rebuilt and checked against the digests."""
    meta, _ = anomalyclip_golden
    folder = tmp_path_factory.mktemp("anomalyclip")
    weights = _rebuilt_clip(meta, folder)
    checkpoint = fixtures.official_checkpoint("anomalyclip", meta["checkpoint_seed"], torch.load(weights))
    if fixtures.state_digest(checkpoint["prompt_learner"]) != meta["checkpoint_sha256"]:
        raise StageMismatch("learnable_weights", "first differing stage: 'learnable_weights': the seeded "
                            "official-layout AnomalyCLIP checkpoint does not rebuild to the fixture's digest")
    torch.save(checkpoint, folder / "anomalyclip_official.pth")
    return weights, folder / "anomalyclip_official.pth"


def _anomalyclip(meta, files, **overrides):
    from clipad_lib.methods.anomalyclip import AnomalyCLIPConfig, AnomalyCLIPDetector

    weights, checkpoint = files
    settings = dict(backbone=meta["model"], pretrained=str(weights), image_size=meta["image_size"],
                    layers=tuple(meta["layers"]), prompt_length=meta["prompt_length"],
                    deep_prompt_depth=meta["deep_prompt_depth"], deep_prompt_length=meta["deep_prompt_length"],
                    dpam_blocks=meta["dpam_blocks"], gaussian_sigma=float(meta["sigma"]))
    config = AnomalyCLIPConfig(**{**settings, **overrides})
    return AnomalyCLIPDetector(config).load_official_checkpoint(checkpoint)


def anomalyclip_stages(detector, meta, data):
    images = fixtures.normalize_images(data["images"])
    text = functools.cache(lambda: detector.text_embeddings().detach())
    features = functools.cache(lambda: detector.image_features(images))
    predicted = functools.cache(lambda: detector.predict(images))

    def probabilities(j):
        with torch.no_grad():
            return torch.softmax(features()[1][j] @ text().T / detector.config.temperature, dim=-1)

    def raw_map():
        with torch.no_grad():
            maps = [detector.probability_maps(p, text(), images.shape[-1]) for p in features()[1]]
        return sum((m[:, 1] + 1 - m[:, 0]) / 2 for m in maps)

    return [
        ("activation", lambda: [float(n == "QuickGELU") for n in _gelu(detector.backbone)],
         [float(n == "QuickGELU") for n in meta["gelu"]]),
        ("text_embeddings", text, data["text"]),
        ("image_embedding", lambda: features()[0], data["image_embedding"]),
        *[(f"patch_probabilities[{layer}]", (lambda j=j: probabilities(j)), data[f"patch_probabilities_{j}"])
          for j, layer in enumerate(meta["layers"])],
        ("anomaly_map_before_smoothing", raw_map, data["map_raw"]),
        ("anomaly_map_smoothed", lambda: predicted().anomaly_maps, data["map_smoothed"]),
        ("image_score", lambda: predicted().image_scores, data["image_score"]),
    ]


def test_anomalyclip_matches_official(anomalyclip_golden, anomalyclip_files):
    meta, data = anomalyclip_golden
    assert meta["gelu"] == ["QuickGELU"], "its model code builds QuickGELU blocks"
    from clipad_lib.backbones import architecture

    blocks = architecture(meta["model"]).layers
    # one layer before the DPAM blocks (original path), the others inside them (DPAM path)
    assert meta["layers"][0] <= blocks - meta["dpam_blocks"] < meta["layers"][1]
    compare(anomalyclip_stages(_anomalyclip(meta, anomalyclip_files), meta, data))


def test_anomalyclip_departures_are_caught(anomalyclip_golden, anomalyclip_files):
    """Without DPAM the DPAM layers' maps differ (the plain layer before them still matches);
    with ln_post on the class token the image embedding differs."""
    meta, data = anomalyclip_golden
    stages = anomalyclip_stages(_anomalyclip(meta, anomalyclip_files, dpam_blocks=0), meta, data)
    with pytest.raises(StageMismatch) as caught:
        compare(stages[:2] + stages[3:])
    assert caught.value.stage == f"patch_probabilities[{meta['layers'][1]}]"
    stages = anomalyclip_stages(_anomalyclip(meta, anomalyclip_files, image_ln_post=True), meta, data)
    with pytest.raises(StageMismatch) as caught:
        compare(stages)
    assert caught.value.stage == "image_embedding"


# -- PatchCore (amazon-science/patchcore-inspection) ------------------------------------------

@pytest.fixture(scope="module")
def patchcore_golden():
    meta, data = _fixture("patchcore")
    assert fixtures.state_digest(fixtures.cnn_state_dict(meta["backbone"], meta["init_seed"])) == meta["weights_sha256"]
    from clipad_lib.backbones.timm_cnn import build_cnn_backbone

    return meta, data, build_cnn_backbone(meta["backbone"], None, meta["image_size"], init_seed=meta["init_seed"])


def patchcore_stages(detector, meta, data):
    from clipad_lib.methods import FitData

    mean, std = meta["mean"], meta["std"]
    train = fixtures.normalize_images(data["train_images"], mean, std)
    test = fixtures.normalize_images(data["test_images"], mean, std)
    detector.fit(FitData(reference_images=train))
    features = detector.patch_features(test)
    prediction = detector.predict(test)
    return [
        ("features", lambda: features.reshape(-1, features.shape[-1])[:meta["feature_rows"]], data["features"]),
        ("patch_scores", lambda: detector.patch_scores(test).flatten(), data["patch_scores"]),
        ("image_scores", prediction.image_scores, data["image_scores"]),
        ("maps", prediction.anomaly_maps, data["maps"]),
    ]


def _patchcore(meta, backbone, **changes):
    from clipad_lib.methods import PatchCoreConfig, PatchCoreDetector

    config = PatchCoreConfig(backbone=meta["backbone"], pretrained=None, image_size=meta["image_size"],
                             coreset_ratio=1.0, **changes)  # the fixture's IdentitySampler
    return PatchCoreDetector(config, backbone)


def _score_tolerance(data) -> float:
    """faiss computes |x|^2 + |y|^2 - 2 x.y in float32 over 1024 dimensions: it loses about 1e-5 of
    the squared feature norms, far more than the distances' own size suggests."""
    return max(TOLERANCE, 1e-5 * float((data["features"].astype(np.float64) ** 2).sum(axis=1).max()))


def test_patchcore_matches_official(patchcore_golden):
    """The features at the usual tolerance; the scores and maps within faiss's float32 rounding."""
    meta, data, backbone = patchcore_golden
    detector = _patchcore(meta, backbone)
    config = detector.config
    assert (config.stages, config.patch_size, config.pretrain_embed_dim, config.target_embed_dim,
            config.num_neighbours) == ((2, 3), meta["patchsize"], meta["pretrain_embed_dimension"],
                                       meta["target_embed_dimension"], meta["anomaly_score_num_nn"])
    stages = patchcore_stages(detector, meta, data)
    compare(stages[:1])
    compare(stages[1:], tolerance=_score_tolerance(data))


def test_patchcore_departures_are_caught(patchcore_golden):
    """Without the 3x3 local aggregation the features differ; with torchvision-style 'mirror'
    smoothing only the map does."""
    meta, data, backbone = patchcore_golden
    with pytest.raises(StageMismatch) as caught:
        compare(patchcore_stages(_patchcore(meta, backbone, patch_size=1), meta, data)[:1])
    assert caught.value.stage == "features"
    stages = patchcore_stages(_patchcore(meta, backbone, smoothing_boundary="mirror"), meta, data)
    with pytest.raises(StageMismatch) as caught:
        compare(stages[1:], tolerance=_score_tolerance(data))
    assert caught.value.stage == "maps"


# -- PaDiM (anomalib's PadimModel) --------------------------------------------------------------

@pytest.fixture(scope="module")
def padim_golden():
    meta, data = _fixture("padim")
    weights = fixtures.cnn_state_dict(meta["backbone"], meta["init_seed"], meta["image_size"])
    assert fixtures.state_digest(weights) == meta["weights_sha256"]
    from clipad_lib.backbones.timm_cnn import build_cnn_backbone

    return meta, data, build_cnn_backbone(meta["backbone"], None, meta["image_size"], init_seed=meta["init_seed"])


def padim_stages(meta, data, backbone, **changes):
    from clipad_lib.methods import FitData, PaDiMConfig, PaDiMDetector

    config = PaDiMConfig(backbone=meta["backbone"], pretrained=None, image_size=meta["image_size"],
                         feature_dims=meta["n_features"], **{"smoothing_boundary": "mirror", **changes})
    detector = PaDiMDetector(config, backbone)
    detector.selected = torch.from_numpy(data["idx"]).long()  # anomalib's own channel draw
    train = fixtures.normalize_images(data["train_images"], meta["mean"], meta["std"])
    test = fixtures.normalize_images(data["test_images"], meta["mean"], meta["std"])
    detector.fit(FitData(reference_images=train))
    prediction = detector.predict(test)
    grid = data["distance"].shape[-1]
    return [("embedding", lambda: detector.embeddings(test).transpose(1, 2).reshape(len(test), -1, grid, grid),
             data["embedding"]),
            ("distance", lambda: detector.distance_map(test), data["distance"]),
            ("maps", prediction.anomaly_maps, data["maps"]),
            ("image_scores", prediction.image_scores, data["image_scores"].reshape(-1))]


def _padim_tolerance(data) -> float:
    """anomalib estimates the covariance and inverts it in float32; with 4 images and 100 channels
    the matrix is rank 3 + 0.01 I, so its distances carry ~5e-4 relative error (this workbook works
    in float64 and is within 3e-6 of a float64 numpy computation, tests/test_cnn_baselines.py)."""
    return 1e-3 * float(np.abs(data["distance"]).max())


def test_padim_matches_anomalib(padim_golden):
    """The embedding exactly; the Mahalanobis distance, the smoothed map (anomalib's blur pads like
    torch's 'reflect', i.e. smoothing_boundary='mirror') and the score within anomalib's float32 error."""
    meta, data, backbone = padim_golden
    stages = padim_stages(meta, data, backbone)
    compare(stages[:1])
    compare(stages[1:], tolerance=_padim_tolerance(data))


def test_padim_departures_are_caught(padim_golden):
    """scipy's 'reflect' boundary (the reference code's gaussian_filter, this workbook's default)
    differs from anomalib's blur near the border; a covariance regulariser of 0.1 changes the distance."""
    meta, data, backbone = padim_golden
    with pytest.raises(StageMismatch) as caught:
        compare(padim_stages(meta, data, backbone, covariance_epsilon=0.1), tolerance=_padim_tolerance(data))
    assert caught.value.stage == "distance"
    with pytest.raises(StageMismatch) as caught:
        compare(padim_stages(meta, data, backbone, smoothing_boundary="reflect")[1:], tolerance=_padim_tolerance(data))
    assert caught.value.stage == "maps"
    from clipad_lib.methods import PaDiMConfig

    assert PaDiMConfig().smoothing_boundary == "reflect"
