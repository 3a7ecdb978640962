"""The fidelity switches where the official code bases differ: each default is held to the
operation the official code performs (scipy's filter, torch's interpolate, scikit-learn's k-means,
anomalib's template list), and the other choice is shown to differ."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndimage
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from clipad_lib.backbones import build_clip
from clipad_lib.engine import evaluation_protocol
from clipad_lib.methods import (AdaCLIPConfig, AdaCLIPDetector, AprilGANConfig, CLIPPatchMemoryConfig, WinCLIPConfig,
                                WinCLIPDetector, gaussian_smooth)
from clipad_lib.methods.adaclip import hybrid_semantic_fusion, sklearn_kmeans_labels
from clipad_lib.methods.text_prompts import (ANOMALIB_WINCLIP_ENSEMBLE, WINCLIP_ENSEMBLE, frozen_text_embeddings,
                                             state_embeddings)


@pytest.mark.parametrize("shape", [(2, 37, 40), (1, 5, 5)])
def test_smoothing_equals_scipy_gaussian_filter_at_the_border(shape):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    official = np.stack([ndimage.gaussian_filter(m.numpy().astype(np.float64), sigma=4) for m in maps])
    np.testing.assert_allclose(gaussian_smooth(maps, 4.0).numpy(), official, atol=1e-6)
    mirrored = np.stack([ndimage.gaussian_filter(m.numpy().astype(np.float64), sigma=4, mode="mirror") for m in maps])
    np.testing.assert_allclose(gaussian_smooth(maps, 4.0, "mirror").numpy(), mirrored, atol=1e-6)


def test_mirror_is_torchvisions_blur_and_differs_from_scipy_near_the_edge():
    maps = torch.rand(2, 48, 48, generator=torch.Generator().manual_seed(1))
    blurred = gaussian_blur(maps[:, None], kernel_size=33, sigma=4.0)[:, 0]
    torch.testing.assert_close(gaussian_smooth(maps, 4.0, "mirror"), blurred, atol=1e-5, rtol=0)
    difference = (gaussian_smooth(maps, 4.0, "reflect") - blurred).abs()
    assert difference[:, 16:-16, 16:-16].max() < 1e-5 < difference.max()
    with pytest.raises(ValueError, match="boundary must be one of"):
        gaussian_smooth(maps, 4.0, "wrap")


def test_defaults_follow_the_official_code():
    assert AdaCLIPConfig().smoothing_boundary == CLIPPatchMemoryConfig().smoothing_boundary == "reflect"
    assert AdaCLIPConfig().pos_embed_antialias is False and AprilGANConfig().pos_embed_antialias is True
    assert AdaCLIPConfig().kmeans == "batched" and WinCLIPConfig().text_ensemble == "paper"
    # APRIL-GAN: QuickGELU only where its factory calls load_openai_model (OpenAI weights, native size).
    assert AprilGANConfig().uses_quick_gelu is False                       # ViT-L-14-336 at 518: exact GELU
    assert AprilGANConfig(image_size=336).uses_quick_gelu is True
    assert AprilGANConfig(image_size=336, pretrained="laion2b_s32b_b82k").uses_quick_gelu is False
    assert AprilGANConfig(quick_gelu=True).uses_quick_gelu is True


def _native_checkpoint(tmp_path, image_size=64):
    backbone = build_clip("clipad-tiny-ViT", image_size=image_size, init_seed=3)
    path = tmp_path / "native.pt"
    torch.save(backbone.model.state_dict(), path)
    return backbone, path


def test_positional_embedding_resize_with_and_without_antialias(tmp_path):
    native, path = _native_checkpoint(tmp_path)
    source = native.model.visual.positional_embedding.detach()
    grid = source[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    for antialias in (False, True):
        resized = build_clip("clipad-tiny-ViT", pretrained=str(path), image_size=40, pos_embed_antialias=antialias)
        # The official AdaCLIP resize: class token kept, bicubic, align_corners=False, no antialias.
        expected = F.interpolate(grid, size=(5, 5), mode="bicubic", align_corners=False, antialias=antialias)
        expected = torch.cat([source[:1], expected.permute(0, 2, 3, 1).reshape(25, -1)])
        torch.testing.assert_close(resized.model.visual.positional_embedding, expected, rtol=0, atol=0)
    plain = build_clip("clipad-tiny-ViT", pretrained=str(path), image_size=40, pos_embed_antialias=False)
    smooth = build_clip("clipad-tiny-ViT", pretrained=str(path), image_size=40, pos_embed_antialias=True)
    assert (plain.model.visual.positional_embedding - smooth.model.visual.positional_embedding).abs().max() > 1e-3


def test_the_protocol_names_every_fidelity_choice(tmp_path):
    _, path = _native_checkpoint(tmp_path)
    detector = AdaCLIPDetector(AdaCLIPConfig(backbone="clipad-tiny-ViT", pretrained=str(path), image_size=80,
                                             layers=(2, 4), hsf_clusters=2))
    protocol = evaluation_protocol(detector)
    assert protocol["pos_embed_resize"] == "bicubic, no antialias" and protocol["activation"] == "gelu"
    assert protocol["smoothing_boundary"] == "reflect" and protocol["kmeans"] == "batched"
    winclip = WinCLIPDetector(WinCLIPConfig(backbone="clipad-tiny-ViT", pretrained=None, image_size=64,
                                            text_ensemble="anomalib"))
    protocol = evaluation_protocol(winclip)
    assert protocol["text_ensemble"] == "anomalib" and protocol["pos_embed_resize"] == "none"


def test_sklearn_kmeans_is_the_official_call_seeded():
    from sklearn.cluster import KMeans

    features = torch.randn(2, 30, 6, generator=torch.Generator().manual_seed(0))
    labels = sklearn_kmeans_labels(features, 4, seed=7)
    for image, image_labels in zip(features, labels):
        expected = KMeans(n_clusters=4, n_init="auto", random_state=7).fit_predict(image.double().numpy())
        assert np.array_equal(image_labels.numpy(), expected)
    tokens = [F.normalize(torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(i)), dim=-1) for i in range(2)]
    logits = [torch.randn(2, 40, 2, generator=torch.Generator().manual_seed(5 + i)) for i in range(2)]
    fused = {k: hybrid_semantic_fusion(tokens, logits, 3, 5, "all", 0, kmeans=k) for k in ("batched", "sklearn")}
    assert all(f.shape == (2, 8) for f in fused.values())
    torch.testing.assert_close(fused["sklearn"].norm(dim=-1), torch.ones(2))


def test_anomalib_ensemble_averages_raw_sentence_embeddings(tiny_backbone):
    assert len(ANOMALIB_WINCLIP_ENSEMBLE.templates) == 21 and len(WINCLIP_ENSEMBLE.templates) == 22
    assert "broken {}" not in ANOMALIB_WINCLIP_ENSEMBLE.abnormal_states
    sentences = ANOMALIB_WINCLIP_ENSEMBLE.sentences("pill")
    assert len(sentences) == 21 * 7 + 21 * 4 and sentences[0] == "a cropped photo of the pill."
    raw = tiny_backbone.encode_text(sentences, normalize=False)
    count = ANOMALIB_WINCLIP_ENSEMBLE.normal_count
    expected = F.normalize(torch.stack([raw[:count].mean(0), raw[count:].mean(0)]), dim=-1)
    torch.testing.assert_close(frozen_text_embeddings(tiny_backbone, ANOMALIB_WINCLIP_ENSEMBLE, "pill"), expected)
    assert not torch.allclose(state_embeddings(raw, count), expected)


def test_aprilgan_keeps_the_class_name_as_given_and_adaclip_reads_hyphens_as_spaces(tiny_backbone):
    from clipad_lib.methods.text_prompts import ADACLIP_ENSEMBLE, APRILGAN_ENSEMBLE

    as_given = tiny_backbone.encode_text(APRILGAN_ENSEMBLE.sentences("metal-nut"), normalize=False)
    expected = state_embeddings(as_given, APRILGAN_ENSEMBLE.normal_count)
    torch.testing.assert_close(frozen_text_embeddings(tiny_backbone, APRILGAN_ENSEMBLE, "metal-nut"), expected)
    spaced = tiny_backbone.encode_text(ADACLIP_ENSEMBLE.sentences("metal nut"), normalize=False)
    torch.testing.assert_close(frozen_text_embeddings(tiny_backbone, ADACLIP_ENSEMBLE, "metal-nut"),
                               state_embeddings(spaced, ADACLIP_ENSEMBLE.normal_count))
