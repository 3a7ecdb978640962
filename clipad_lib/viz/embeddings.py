"""Patch-embedding and HSF figures (AdaCLIP Fig. 4, Fig. 7 and supplementary Fig. 2).

* :func:`project_embeddings` reduces patch embeddings [N, D] to 2-D with PCA (Fig. 4) or
  t-SNE (Fig. 7);
* :func:`patch_labels` turns pixel masks into one normal/abnormal label per patch;
* :func:`embedding_scatter` draws the projections, normal and abnormal patches coloured;
* :func:`hsf_cluster_figure` draws what Hybrid Semantic Fusion clustered
  (:meth:`AdaCLIPDetector.hsf_clusters`);
* :func:`hsf_explorer` steps through the HSF figure image by image.

The interactive embedding explorer is :func:`clipad_lib.viz.explorers.embedding_explorer`.

The embeddings come from :meth:`AdaCLIPDetector.patch_embeddings` ({layer: [B, N, D]}); patch
``p`` of an image sits at row ``p // grid``, column ``p % grid`` of its patch grid.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from .figures import _png_bytes

PROJECTIONS = ("pca", "tsne")
PROJECTION_TITLES = {"pca": "PCA", "tsne": "t-SNE"}
NORMAL_COLOUR, ABNORMAL_COLOUR = "tab:blue", "tab:red"


def _array(values, name: str) -> np.ndarray:
    """A NumPy copy of an array or a (CPU or GPU, grad or not) torch tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} is not an array: {exc}") from None


# -- projections and labels -------------------------------------------------------------------

def project_embeddings(features, method: str = "pca", seed: int = 0, perplexity: float = 30) -> np.ndarray:
    """Reduce features [N, D] to points [N, 2] with scikit-learn.

    Args:
        features: [N, D] array or tensor, finite; e.g. one layer of
            :meth:`AdaCLIPDetector.patch_embeddings` flattened to [B·N, D].
        method: "pca" (``PCA(2, random_state=seed)``, as Fig. 4) or "tsne"
            (``TSNE(2, init="pca", random_state=seed)``, as Fig. 7).
        seed: random state of either; the same inputs and seed give the same points.
        perplexity: t-SNE only; scikit-learn needs it below N, so it is clipped to N - 1.
    Returns:
        [N, 2] float64.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"method must be one of {PROJECTIONS}, got {method!r}")
    values = _array(features, "features")
    if values.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {list(values.shape)}")
    count, dim = values.shape
    if count < 2 or dim < 2:
        raise ValueError(f"a 2-D projection needs at least 2 points of at least 2 dimensions, got [N={count}, D={dim}]")
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"features must be real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("features contain NaN or infinite values")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(values)
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float, np.integer, np.floating)) \
            or not perplexity > 0:
        raise ValueError(f"perplexity must be a positive number, got {perplexity!r}")
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=float(min(perplexity, count - 1)), init="pca",
                random_state=seed).fit_transform(values)


def patch_labels(masks, grid: int, fraction: float = 0.5) -> np.ndarray:
    """One label per patch from pixel masks: 1 (abnormal) where at least ``fraction`` of the
    patch's pixels are in the mask, else 0.

    The default (half the patch) labels a patch by what most of it shows, which is what its
    embedding mostly encodes; a tiny ``fraction`` (e.g. 1e-9) gives "any pixel" instead, which also
    marks patches that only touch a defect's border.

    Args:
        masks: [B, S, S] bool (or 0/1; nonzero is "in the mask"), S a multiple of ``grid``
            (each patch covers (S/grid)² pixels, as the ViT's patch embedding cuts the image).
        grid: patches per side (``detector.backbone.grid_size``, or ``HSFView.grid``).
        fraction: in (0, 1].
    Returns:
        [B, grid·grid] int64, row-major like the patch tokens.
    """
    values = _array(masks, "masks")
    if values.ndim != 3 or values.shape[1] != values.shape[2]:
        raise ValueError(f"masks must be [B, S, S], got shape {list(values.shape)}")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    size = values.shape[1]
    if size % grid:
        raise ValueError(f"mask side {size} is not a multiple of the patch grid {grid}; resize the masks to the "
                         f"detector's image size (detector.transform.mask)")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    step = size // grid
    inside = (values != 0).reshape(len(values), grid, step, grid, step).mean(axis=(2, 4))  # [B, grid, grid]
    return (inside >= fraction).reshape(len(values), grid * grid).astype(np.int64)


# -- figures ----------------------------------------------------------------------------------

def _points_and_labels(title: str, points, labels) -> tuple[np.ndarray, np.ndarray]:
    points, labels = _array(points, f"panel {title!r} points"), _array(labels, f"panel {title!r} labels")
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"panel {title!r}: points must be [N, 2], got shape {list(points.shape)}")
    if labels.shape != (len(points),):
        raise ValueError(f"panel {title!r}: labels must be [N] = [{len(points)}], got shape {list(labels.shape)}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"panel {title!r}: labels must be 0 (normal) or 1 (abnormal)")
    return points, labels.astype(np.int64)


def _scatter(axis, points: np.ndarray, labels: np.ndarray, title: str, highlight: int | None = None) -> None:
    size = 8 if len(points) < 2000 else 3
    for label, colour, name in ((0, NORMAL_COLOUR, "normal"), (1, ABNORMAL_COLOUR, "abnormal")):
        chosen = labels == label  # abnormal drawn last, on top: they are the few
        axis.scatter(points[chosen, 0], points[chosen, 1], s=size, c=colour, label=f"{name} ({int(chosen.sum())})",
                     linewidths=0)
    if highlight is not None:
        axis.scatter(points[highlight, 0], points[highlight, 1], s=160, marker="*", c="gold", edgecolors="black",
                     linewidths=1.0, zorder=5, label=f"patch {highlight}")
    axis.set_title(title, fontsize=9)
    axis.set_xticks([]); axis.set_yticks([])


def embedding_scatter(panels: Mapping[str, tuple], title: str = ""):
    """One scatter panel per entry, normal (blue) and abnormal (red) patches (Fig. 7, Fig. 4 left halves).

    panels: panel title -> (points [N, 2] from :func:`project_embeddings`, labels [N] in {0, 1}
    from :func:`patch_labels`, flattened), e.g. "CLIP / MVTec", "CLIP / VisA". Returns the Figure.
    """
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("panels must be a non-empty mapping of title -> (points [N, 2], labels [N])")
    checked = {}
    for name, panel in panels.items():
        if not isinstance(panel, (tuple, list)) or len(panel) != 2:
            raise ValueError(f"panel {name!r} must be a pair (points [N, 2], labels [N])")
        checked[name] = _points_and_labels(name, *panel)
    figure, axes = plt.subplots(1, len(checked), figsize=(3.4 * len(checked), 3.4), squeeze=False)
    for axis, (name, (points, labels)) in zip(axes[0], checked.items()):
        _scatter(axis, points, labels, name)
    axes[0][0].legend(fontsize=7, markerscale=2)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _cluster_colours(clusters: int) -> ListedColormap:
    base = plt.get_cmap("tab20" if clusters <= 20 else "gist_rainbow")
    return ListedColormap([base(i if clusters <= 20 else i / max(1, clusters - 1)) for i in range(clusters)])


def _check_pictures(images, masks, maps, count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, masks, maps = _array(images, "images"), _array(masks, "masks"), _array(maps, "maps")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, S, S, 3] in [0, 1] (transform.unnormalize), got {list(images.shape)}")
    size = images.shape[1:3]
    for name, values in (("masks", masks), ("maps", maps)):
        if values.shape != (len(images), *size):
            raise ValueError(f"{name} must be [B, S, S] = {[len(images), *size]} like the images, "
                             f"got {list(values.shape)}")
    if count is not None and len(images) != count:
        raise ValueError(f"{len(images)} images for {count} rows of patch data")
    return images, masks, maps


def _patch_extent(size: tuple[int, int]) -> tuple[float, float, float, float]:
    return (-0.5, size[1] - 0.5, size[0] - 0.5, -0.5)


def hsf_cluster_figure(images, masks, maps, view, titles=None):
    """What HSF clustered (AdaCLIP supp. Fig. 2): one column per image, five rows — the image,
    its ground truth, the anomaly map, the cluster of every clustered patch (one colour per
    cluster; unclustered patches left clear) and each patch coloured by its cluster's mean
    anomaly score, with the highest-scoring cluster (the one ``hsf_centroids="top"`` keeps)
    outlined.

    Args:
        images: [B, S, S, 3] in [0, 1] (``detector.transform.unnormalize``), the images the view
            was computed on; masks: [B, S, S]; maps: [B, S, S] (``predict(...).anomaly_maps``).
        view: :class:`~clipad_lib.methods.adaclip.HSFView` from ``detector.hsf_clusters``. HSF
            clusters the layers' tokens concatenated, so there is one clustering, not one per layer.
        titles: optional, one per image.
    """
    labels = _array(view.label_grid(), "view.labels")
    scores = _array(view.score_grid(), "view.cluster_scores")
    images, masks, maps = _check_pictures(images, masks, maps, len(labels))
    titles = list(titles) if titles is not None else [f"image {i}" for i in range(len(images))]
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    clusters, top = view.clusters, _array(view.top_clusters, "view.top_clusters")
    cluster_scores = _array(view.cluster_scores, "view.cluster_scores")
    size, extent = images.shape[1:3], _patch_extent(images.shape[1:3])
    low, high = float(maps.min()), float(maps.max())
    finite = scores[np.isfinite(scores)]
    score_low, score_high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    colours = _cluster_colours(clusters)
    count = len(images)
    figure, axes = plt.subplots(5, count, figsize=(2.0 * count + 0.6, 10.2), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(images[column])
        axes[0, column].set_title(titles[column], fontsize=7)
        axes[1, column].imshow(masks[column] != 0, cmap="gray", vmin=0, vmax=1)
        axes[2, column].imshow(images[column])
        axes[2, column].imshow(maps[column], cmap="jet", alpha=0.5, vmin=low, vmax=high)
        axes[3, column].imshow(images[column], alpha=0.4)
        axes[3, column].imshow(np.ma.masked_less(labels[column], 0), cmap=colours, vmin=-0.5, vmax=clusters - 0.5,
                               extent=extent, interpolation="nearest")
        axes[4, column].imshow(images[column], alpha=0.4)
        shown = axes[4, column].imshow(np.ma.masked_invalid(scores[column]), cmap="jet", vmin=score_low,
                                       vmax=score_high, extent=extent, interpolation="nearest")
        best = (labels[column] == top[column]).astype(float)
        rows, columns = (np.arange(s) * best.shape[k] // s for k, s in enumerate(size))  # pixel -> patch
        axes[4, column].contour(best[np.ix_(rows, columns)], levels=[0.5], colors="white", linewidths=1.0)
        axes[4, column].set_title(f"top cluster {int(top[column])}: {cluster_scores[column, top[column]]:.3f}",
                                  fontsize=7)
    for axis in axes.flat:
        axis.axis("off")
    for row, name in enumerate(("image", "ground truth", "anomaly map", f"clusters (K={clusters})",
                                "cluster mean score")):
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right",
                          fontsize=8)
    figure.colorbar(shown, ax=list(axes[4]), fraction=0.02, pad=0.01)
    return figure


# -- the HSF explorer -------------------------------------------------------------------------

def hsf_explorer(images, masks, maps, view_of, titles=None):
    """The interactive supp. Fig. 2: an IntSlider picks one image, and its HSF figure
    (:func:`hsf_cluster_figure`: image, ground truth, map, clusters, cluster mean scores) is drawn.

    Args:
        images: [B, S, S, 3] in [0, 1]; masks, maps: [B, S, S].
        view_of: index -> the :class:`~clipad_lib.methods.adaclip.HSFView` of that one image, e.g.
            ``lambda i: detector.hsf_clusters(batch[i:i + 1], names[i:i + 1])``; called once per
            image shown (cached), so a large batch costs only what is looked at.
    Returns an ``ipywidgets.VBox`` (``controls["image"]`` is the slider) that also renders headless.
    """
    import ipywidgets as widgets

    images, masks, maps = _check_pictures(images, masks, maps)
    titles = list(titles) if titles is not None else [f"image {i}" for i in range(len(images))]
    if len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    slider = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
    picture = widgets.Image(format="png")
    views: dict[int, object] = {}

    def render(*_):
        index = slider.value
        if index not in views:
            views[index] = view_of(index)
        figure = hsf_cluster_figure(images[index:index + 1], masks[index:index + 1], maps[index:index + 1],
                                    views[index], titles=[titles[index]])
        picture.value = _png_bytes(figure)
        plt.close(figure)

    slider.observe(render, names="value")
    render()
    box = widgets.VBox([slider, picture])
    box.controls = {"image": slider, "picture": picture}
    box.views = views
    return box
