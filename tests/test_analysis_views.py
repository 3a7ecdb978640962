"""Analysis views of AdaCLIP (patch embeddings, HSF clusters) and the figures drawn from them."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipad_lib.data import load_dataset
from clipad_lib.methods import create_detector, method_entry
from clipad_lib.methods.adaclip import HSFView, hybrid_semantic_fusion
from clipad_lib.viz import embeddings as views
from clipad_lib.viz.embeddings import embedding_scatter, hsf_cluster_figure, patch_labels, project_embeddings

INDICES = (0, 1, 2, 4)  # three anomalous pills, one normal


@pytest.fixture(autouse=True)
def one_thread():
    """t-SNE (OpenMP) on few points is fastest on one thread, and much slower on a busy machine's many."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def setup(synthetic_root):
    detector = create_detector("adaclip", method_entry("adaclip").smoke_config())
    dataset = load_dataset("synthetic", "test", root=synthetic_root, categories=["pill"])
    samples = [dataset[i] for i in INDICES]
    images = torch.stack([detector.transform.image(s.image) for s in samples])
    masks = torch.stack([detector.transform.mask(s.mask) for s in samples])
    names = ["pill"] * len(samples)
    before = detector.predict(images, names)
    embeddings = detector.patch_embeddings(images, names)
    view = detector.hsf_clusters(images, names)
    return dict(detector=detector, images=images, masks=masks, names=names, before=before, embeddings=embeddings,
                view=view, pictures=detector.transform.unnormalize(images).numpy())


# -- AdaCLIPDetector views ----------------------------------------------------------------------

def test_patch_embeddings_are_the_maps_tokens(setup):
    detector, embeddings, images = setup["detector"], setup["embeddings"], setup["images"]
    grid, batch = detector.backbone.grid_size, len(images)
    assert list(embeddings) == list(detector.config.layers) == [2, 4, 6, 8]
    with torch.no_grad():
        encoded = detector.model.encode(images, setup["names"])
    for (layer, tokens), reference in zip(embeddings.items(), encoded["patch_tokens"]):
        assert tokens.shape == (batch, grid * grid, detector.backbone.embed_dim), layer
        assert torch.allclose(tokens.norm(dim=-1), torch.ones(batch, grid * grid), atol=1e-5)
        assert torch.equal(tokens, reference)
    assert all(torch.equal(a, b) for a, b in zip(detector.patch_embeddings(images).values(), embeddings.values()))


def test_views_leave_predict_unchanged(setup):
    detector, images, names, before = setup["detector"], setup["images"], setup["names"], setup["before"]
    detector.patch_embeddings(images, names)
    detector.hsf_clusters(images, names)
    after = detector.predict(images, names)
    assert torch.equal(before.anomaly_maps, after.anomaly_maps)
    assert torch.equal(before.image_scores, after.image_scores)


def test_hsf_view_shapes_and_invariants(setup):
    detector, view = setup["detector"], setup["view"]
    config, batch, grid = detector.config, len(setup["images"]), detector.backbone.grid_size
    assert isinstance(view, HSFView)
    top = min(grid * grid, config.hsf_top_factor * config.hsf_clusters)
    clusters = min(config.hsf_clusters, top)
    assert (view.grid, view.top, view.clusters, view.layers) == (grid, top, clusters, config.layers)
    assert view.labels.shape == view.patch_scores.shape == (batch, grid * grid)
    assert view.cluster_scores.shape == view.cluster_sizes.shape == (batch, clusters)
    assert view.label_grid().shape == view.score_grid().shape == (batch, grid, grid)
    for b in range(batch):
        labels, scores = view.labels[b], view.patch_scores[b]
        clustered = labels >= 0
        assert int(clustered.sum()) == top and int(labels.max()) < clusters
        # HSF clusters exactly the top patches by abnormal probability
        assert scores[clustered].min() >= scores[~clustered].max()
        assert torch.equal(view.cluster_sizes[b], torch.bincount(labels[clustered], minlength=clusters))
        for c in range(clusters):
            members = labels == c
            if members.any():
                assert torch.isclose(view.cluster_scores[b, c], scores[members].mean(), atol=1e-6)
            else:
                assert torch.isnan(view.cluster_scores[b, c])
        assert int(view.top_clusters[b]) == int(torch.nan_to_num(view.cluster_scores[b], -1.0).argmax())
        score_grid = view.score_grid()[b].flatten()
        assert torch.isnan(score_grid[~clustered]).all()
        assert torch.equal(score_grid[clustered], view.cluster_scores[b, labels[clustered]])
    # the patch scores are the softmax of the layers' mean logits, the scores HSF ranks by
    with torch.no_grad():
        encoded = detector.model.encode(setup["images"], setup["names"])
    expected = torch.softmax(torch.stack(encoded["layer_logits"]).mean(0), dim=-1)[..., 1]
    assert torch.equal(view.patch_scores, expected)


def test_hsf_view_is_what_the_fusion_fuses(setup):
    """The "top" fusion is the mean over the top cluster's members and layers of the patch embeddings."""
    detector, view, embeddings = setup["detector"], setup["view"], setup["embeddings"]
    config = detector.config
    with torch.no_grad():
        encoded = detector.model.encode(setup["images"], setup["names"])
        fused = hybrid_semantic_fusion(encoded["patch_tokens"], encoded["layer_logits"], config.hsf_clusters,
                                       config.hsf_top_factor, "top", config.seed, config.kmeans)
        tokens = torch.stack(list(embeddings.values())).mean(dim=0)  # [B, N, D], mean over layers
        members = view.labels == view.top_clusters[:, None]
        expected = torch.stack([tokens[b, members[b]].mean(dim=0) for b in range(len(tokens))])
        assert torch.allclose(fused, F.normalize(expected, dim=-1), atol=1e-5)


def test_view_bad_inputs(setup):
    detector, images = setup["detector"], setup["images"]
    with pytest.raises(ValueError, match="one class name per image"):
        detector.hsf_clusters(images, ["pill"])
    with pytest.raises(ValueError, match="one class name per image"):
        detector.hsf_clusters(images, None)
    with pytest.raises(ValueError, match="one class name per image"):
        detector.patch_embeddings(images, ["pill"])
    with pytest.raises(ValueError, match=r"images \[B, 3, S, S\]"):
        detector.patch_embeddings(images[0], None)


# -- projections and labels ---------------------------------------------------------------------

def test_projections_shapes_and_determinism(setup):
    features = setup["embeddings"][8][:2].flatten(0, 1)  # [B·N, D] of two images
    for method in ("pca", "tsne"):
        points = project_embeddings(features, method, seed=0)
        assert points.shape == (len(features), 2) and np.isfinite(points).all()
        assert np.allclose(points, project_embeddings(features.numpy(), method, seed=0), atol=1e-6)
    # perplexity is clipped below N: 30 on 6 points still runs
    assert project_embeddings(features[:6], "tsne", perplexity=30).shape == (6, 2)


def test_projection_errors():
    good = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match="method must be one of"):
        project_embeddings(good, "umap")
    with pytest.raises(ValueError, match=r"features must be \[N, D\]"):
        project_embeddings(good[0])
    with pytest.raises(ValueError, match="at least 2 points"):
        project_embeddings(good[:1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        project_embeddings(np.where(np.eye(10, 4) > 0, np.nan, good))
    with pytest.raises(ValueError, match="perplexity must be a positive number"):
        project_embeddings(good, "tsne", perplexity=0)
    with pytest.raises(ValueError, match="real numbers"):
        project_embeddings(np.full((3, 3), "a"))


def test_patch_labels_on_a_hand_made_mask():
    mask = np.zeros((1, 8, 8), dtype=bool)  # grid 2: four 4x4 patches
    mask[0, :4, :4] = True        # patch (0, 0): all of it
    mask[0, 0, 7] = True          # patch (0, 1): one pixel
    mask[0, 4:6, :4] = True       # patch (1, 0): exactly half
    assert patch_labels(mask, 2).tolist() == [[1, 0, 1, 0]]
    assert patch_labels(mask, 2, fraction=1e-9).tolist() == [[1, 1, 1, 0]]
    assert patch_labels(mask, 2, fraction=1.0).tolist() == [[1, 0, 0, 0]]
    assert patch_labels(torch.from_numpy(mask.astype(np.uint8)), 2).dtype == np.int64
    with pytest.raises(ValueError, match="not a multiple of the patch grid"):
        patch_labels(mask, 3)
    with pytest.raises(ValueError, match=r"masks must be \[B, S, S\]"):
        patch_labels(mask[0], 2)
    with pytest.raises(ValueError, match="fraction"):
        patch_labels(mask, 2, fraction=0)
    with pytest.raises(ValueError, match="grid must be a positive integer"):
        patch_labels(mask, 0)


# -- figures ------------------------------------------------------------------------------------

def test_embedding_scatter_and_errors(setup):
    labels = patch_labels(setup["masks"], setup["view"].grid).reshape(-1)
    assert 0 < labels.sum() < len(labels)
    panels = {f"layer {layer}": (project_embeddings(tokens.flatten(0, 1)), labels)
              for layer, tokens in setup["embeddings"].items()}
    figure = embedding_scatter(panels, title="CLIP patch embeddings")
    assert len(figure.axes) == 4 and figure.axes[0].get_title() == "layer 2"
    plt.close(figure)
    points = panels["layer 2"][0]
    with pytest.raises(ValueError, match="non-empty mapping"):
        embedding_scatter({})
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        embedding_scatter({"a": (points, labels[:-1])})
    with pytest.raises(ValueError, match=r"points must be \[N, 2\]"):
        embedding_scatter({"a": (points[:, :1], labels)})
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        embedding_scatter({"a": (points, labels * 2)})


def test_hsf_cluster_figure(setup):
    maps = setup["before"].anomaly_maps
    figure = hsf_cluster_figure(setup["pictures"], setup["masks"], maps, setup["view"], titles=list("abcd"))
    assert len(figure.axes) == 5 * 4 + 1  # five rows per image, and the score colour bar
    plt.close(figure)
    with pytest.raises(ValueError, match="3 images for 4 rows"):
        hsf_cluster_figure(setup["pictures"][:3], setup["masks"][:3], maps[:3], setup["view"])
    with pytest.raises(ValueError, match="masks must be"):
        hsf_cluster_figure(setup["pictures"], setup["masks"][:, :8], maps, setup["view"])


# -- the HSF explorer ---------------------------------------------------------------------------

def test_hsf_explorer_draws_one_image_at_a_time_and_caches_its_view(setup):
    detector, images, names = setup["detector"], setup["images"], setup["names"]
    asked = []

    def view_of(index):
        asked.append(index)
        return detector.hsf_clusters(images[index:index + 1], names[index:index + 1])

    explorer = views.hsf_explorer(setup["pictures"], setup["masks"], setup["before"].anomaly_maps, view_of)
    first = explorer.controls["picture"].value
    assert asked == [0] and first[:4] == b"\x89PNG"
    explorer.controls["image"].value = 2
    assert asked == [0, 2] and explorer.controls["picture"].value != first
    explorer.controls["image"].value = 0
    assert asked == [0, 2]  # cached
    with pytest.raises(ValueError, match="titles"):
        views.hsf_explorer(setup["pictures"], setup["masks"], setup["before"].anomaly_maps, view_of, titles=["a"])
