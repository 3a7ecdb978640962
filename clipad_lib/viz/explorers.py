"""Interactive explorers for JupyterLab: embeddings, anomaly maps across methods, run records.

* :func:`embedding_explorer` — t-SNE / PCA (/ UMAP when ``umap-learn`` is installed) of any
  embedding set (:class:`EmbeddingPoints`: patch tokens, [CLS] or adapted image features, prompt
  text features), coloured by normal / anomalous, category, defect kind or dataset. Hovering a
  point shows which sample it is; clicking it pins that image, its mask and its anomaly map
  beside the plot.
* :func:`method_explorer` — one sample under every method of a table side by side, pixels above a
  threshold outlined, each method's image score in its title; ←/→ on the focused sample slider
  (or the ◀ ▶ buttons) step through the samples.
* :func:`run_browser` — a grid of table cells (run × dataset/category, the chosen metric's mean
  over seeds); clicking one shows its run record (config, protocol, seeds, timings) and its worst
  false positives and false negatives, ranked from the per-image scores the record keeps.

The scatter is a bqplot figure. bqplot's marks are ipywidgets themselves, so a control change
restyles the points in place, clicks and hovers arrive as widget events, JupyterLab renders them
through the prebuilt extension the wheel installs (no build), and the saved widget state stays
small (a point is a few numbers; plotly's FigureWidget, the alternative, carries its ~5 MB
plotly.js inside every widget's state, which would land in every executed notebook and HTML
export). Every other picture is a PNG rendered by matplotlib into an ``ipywidgets.Image``, so the
explorers also run headless under papermill, which records their first state, and each has a
static matplotlib counterpart for the saved figures.
"""
from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from .embeddings import PROJECTION_TITLES, _array, patch_labels
from .figures import _png_bytes

NORMAL_HEX, ANOMALOUS_HEX = "#1f77b4", "#d62728"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
COLOUR_BY = ("label", "category", "defect", "dataset")
ALL = "all"
DEFAULT_MAX_POINTS = 5000  # an SVG scatter stays responsive, and the saved widget state small, below this


def projection_title(method: str) -> str:
    """"pca" -> "PCA", "tsne" -> "t-SNE", "umap" -> "UMAP"."""
    return PROJECTION_TITLES.get(method, method.upper())


def available_projections() -> tuple[str, ...]:
    """"pca" and "tsne" (scikit-learn), and "umap" when ``umap-learn`` can be imported."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return ("pca", "tsne")
    return ("pca", "tsne", "umap")


def project_points(features, method: str = "pca", seed: int = 0, perplexity: float = 30) -> np.ndarray:
    """[N, D] -> [N, 2] by :func:`~clipad_lib.viz.project_embeddings` ("pca", "tsne") or UMAP
    (``umap.UMAP(random_state=seed)``, neighbours clipped below N)."""
    from .embeddings import project_embeddings

    if method != "umap":
        return project_embeddings(features, method, seed=seed, perplexity=perplexity)
    if "umap" not in available_projections():
        raise ValueError("projection 'umap' needs the umap-learn package (pip install umap-learn)")
    import umap

    values = _array(features, "features").astype(np.float64)
    return umap.UMAP(n_components=2, random_state=seed,
                     n_neighbors=max(2, min(15, len(values) - 1))).fit_transform(values)


# -- the points -------------------------------------------------------------------------------

POINT_COLUMNS = ("dataset", "category", "label", "defect", "image", "patch", "grid", "text")


def _per_item(values, count: int, name: str, default) -> list:
    """``values`` as a list of ``count``: one value for all (a str, or None for ``default``) or a sequence."""
    if values is None:
        return [default] * count
    if isinstance(values, str):
        return [values] * count
    values = list(_array(values, name).tolist() if hasattr(values, "shape") else values)
    if len(values) != count:
        raise ValueError(f"{name} must have {count} entries (one per item), got {len(values)}")
    return values


def _pictures(images, masks, maps, count: int):
    """Checked [B, S, S, 3] images in [0, 1], [B, S, S] masks and maps (each may be None)."""
    arrays = {}
    for name, values, ndim in (("images", images, 4), ("masks", masks, 3), ("maps", maps, 3)):
        if values is None:
            arrays[name] = None
            continue
        values = _array(values, name)
        if values.ndim != ndim or len(values) != count:
            shape = "[B, S, S, 3]" if ndim == 4 else "[B, S, S]"
            raise ValueError(f"{name} must be {shape} with B = {count}, got {list(values.shape)}")
        arrays[name] = values
    if arrays["images"] is not None:
        size = arrays["images"].shape[1:3]
        for name in ("masks", "maps"):
            if arrays[name] is not None and arrays[name].shape[1:3] != size:
                raise ValueError(f"{name} are {list(arrays[name].shape[1:3])} pixels, the images {list(size)}")
    return arrays["images"], arrays["masks"], arrays["maps"]


@dataclass
class EmbeddingPoints:
    """Points to explore: features per feature set, one table row per point, their pictures.

    features: feature set name (a layer, "[CLS]", "adapted", ...) -> [P, D] (D may differ between
        sets; every set has the same P rows).
    table: P rows with :data:`POINT_COLUMNS`: dataset, category, label (0 normal / 1 anomalous),
        defect, image (row of ``images``; -1 for a text point), patch (patch number in the image's
        ``grid`` × ``grid`` patch grid; -1 for a whole image), grid, text (a prompt's words).
    images: [B, S, S, 3] in [0, 1]; masks, maps: [B, S, S]; each may be None.
    map_title: what the maps are, as a pinned sample's panel names them ("anomaly map",
        "gradient map |∂AS/∂x|", ...).

    Build them with :func:`patch_points`, :func:`image_points` or :func:`text_points`, and join
    several of one feature space with :meth:`combine`.
    """

    features: dict[str, np.ndarray]
    table: pd.DataFrame
    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    maps: np.ndarray | None = None
    map_title: str = "anomaly map"
    _names: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.features, Mapping) or not self.features:
            raise ValueError("features must be a non-empty mapping of feature set -> [P, D]")
        missing = [c for c in POINT_COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"table lacks the columns {missing}; expected {list(POINT_COLUMNS)}")
        checked = {}
        for name, values in self.features.items():
            values = _array(values, f"features[{name!r}]")
            if values.ndim != 2 or len(values) != len(self.table):
                raise ValueError(f"features[{name!r}] must be [P, D] with P = {len(self.table)} points, "
                                 f"got {list(values.shape)}")
            checked[str(name)] = values
        self.features = checked
        self.table = self.table.reset_index(drop=True)
        for column in ("dataset", "category", "defect", "text"):  # the controls offer them as strings
            self.table[column] = self.table[column].astype(str)
        pictures = None if self.images is None else len(self.images)
        for name in ("masks", "maps"):
            value = getattr(self, name)
            if value is not None and (pictures is None or len(value) != pictures):
                raise ValueError(f"{name} must have one entry per image ({pictures or 0} images), got {len(value)}")
        used = self.table["image"].to_numpy()
        if (used >= 0).any() and (pictures is None or used.max() >= pictures):
            raise ValueError(f"points refer to image {int(used.max())} but {pictures or 0} images are given")

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def combine(cls, *parts: "EmbeddingPoints") -> "EmbeddingPoints":
        """One set of points from several with the same feature sets (e.g. the patches of several
        categories, or image and text features of one CLIP space); images are concatenated."""
        if not parts:
            raise ValueError("combine needs at least one EmbeddingPoints")
        names = list(parts[0].features)
        for part in parts[1:]:
            if list(part.features) != names:
                raise ValueError(f"combined points must have the same feature sets; got {names} and "
                                 f"{list(part.features)}")
        tables, offset, pictures = [], 0, {"images": [], "masks": [], "maps": []}
        with_images = [p for p in parts if p.images is not None]
        for name in ("masks", "maps"):
            given = [getattr(p, name) is not None for p in with_images]
            if any(given) and not all(given):
                raise ValueError(f"combining points with images needs {name} for all of them, or for none")
        for part in parts:
            table = part.table.copy()
            table.loc[table["image"] >= 0, "image"] += offset
            tables.append(table)
            if part.images is not None:  # (a part without images has no masks or maps either)
                for name in pictures:
                    if getattr(part, name) is not None:
                        pictures[name].append(getattr(part, name))
                offset += len(part.images)
        joined = {n: (np.concatenate(v) if v else None) for n, v in pictures.items()}
        return cls({n: np.concatenate([p.features[n] for p in parts]) for n in names},
                   pd.concat(tables, ignore_index=True), joined["images"], joined["masks"], joined["maps"],
                   parts[0].map_title)

    def names(self) -> list[str]:
        """:meth:`describe` of every row, built column-wise once (fast for tens of thousands of
        patches) and kept: the explorer's tooltips, hover line and pin label all read it."""
        if self._names is None:
            self._names = self._format_names()
        return self._names

    def _format_names(self) -> list[str]:
        table = self.table
        where = [("/".join(p for p in pair if p)) for pair in zip(table["dataset"], table["category"])]
        labels = table["label"].to_numpy().astype(bool)
        state = np.where(labels, "anomalous", "normal")
        images, patches, grids = (table[c].to_numpy().astype(int) for c in ("image", "patch", "grid"))
        names = []
        for i in range(len(table)):
            if images[i] < 0:
                names.append(f"{where[i]} · {state[i]} prompt: “{table['text'].iat[i]}”")
                continue
            text = f"{where[i]} · {table['defect'].iat[i] or state[i]} · image {images[i]}"
            if patches[i] >= 0:
                r, c = divmod(int(patches[i]), int(grids[i]))
                text += f", patch ({r}, {c}) · {state[i]} patch"
            names.append(text)
        return names

    def describe(self, row: int) -> str:
        """One line naming point ``row``: dataset / category · defect · image and patch, or the prompt."""
        return self.names()[row]


def patch_points(embeddings: Mapping[object, object], images, masks, maps=None, *, dataset: str = "",
                 categories=None, defects=None, fraction: float = 0.5) -> EmbeddingPoints:
    """One point per patch: ``embeddings`` {layer: [B, N, D]} (e.g.
    :meth:`AdaCLIPDetector.patch_embeddings`), N a square grid. images [B, S, S, 3] in [0, 1]; masks,
    maps [B, S, S]; categories, defects: one per image (or one str for all). A patch is anomalous
    when at least ``fraction`` of its pixels are (:func:`patch_labels`)."""
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise ValueError("embeddings must be a non-empty mapping of layer -> [B, N, D]")
    images, masks, maps = _pictures(images, masks, maps, len(_array(images, "images")))
    if masks is None:
        raise ValueError("patch points need the masks, to label each patch")
    batch, features, grid = len(images), {}, None
    for layer, values in embeddings.items():
        values = _array(values, f"embeddings[{layer!r}]")
        side = int(round(values.shape[1] ** 0.5)) if values.ndim == 3 else 0
        if values.ndim != 3 or values.shape[0] != batch or side * side != values.shape[1]:
            raise ValueError(f"embeddings[{layer!r}] must be [B, N, D] with B = {batch} images and N a square "
                             f"grid, got {list(values.shape)}")
        if grid not in (None, side):
            raise ValueError(f"embeddings[{layer!r}] has a {side}×{side} grid, the other layers {grid}×{grid}")
        grid = side
        features[f"layer {layer}" if isinstance(layer, (int, np.integer)) else str(layer)] = \
            values.reshape(-1, values.shape[-1])
    per_image = grid * grid
    labels = patch_labels(masks, grid, fraction).reshape(-1)
    categories = _per_item(categories, batch, "categories", "")
    defects = _per_item(defects, batch, "defects", "")
    image_index = np.repeat(np.arange(batch), per_image)
    table = pd.DataFrame({"dataset": dataset, "category": [categories[i] for i in image_index],
                          "label": labels.astype(int), "defect": [defects[i] for i in image_index],
                          "image": image_index, "patch": np.tile(np.arange(per_image), batch), "grid": grid,
                          "text": ""})
    return EmbeddingPoints(features, table, images, masks, maps)


def image_points(features: Mapping[str, object], labels, images=None, masks=None, maps=None, *, dataset: str = "",
                 categories=None, defects=None, map_title: str = "anomaly map") -> EmbeddingPoints:
    """One point per image: ``features`` {name: [B, D]} (e.g. CLIP's [CLS] and an adapted feature,
    CLIP-FSAC++ Fig. 9); labels [B] in {0, 1}; pictures optional ([B, S, S, 3], [B, S, S]);
    ``map_title`` names the maps."""
    labels = np.asarray(_array(labels, "labels")).astype(int).reshape(-1)
    batch = len(labels)
    images, masks, maps = _pictures(images, masks, maps, batch)
    table = pd.DataFrame({"dataset": dataset, "category": _per_item(categories, batch, "categories", ""),
                          "label": labels, "defect": _per_item(defects, batch, "defects", ""),
                          "image": np.arange(batch) if images is not None else -1, "patch": -1, "grid": 0,
                          "text": ""})
    return EmbeddingPoints({str(k): v for k, v in features.items()}, table, images, masks, maps, map_title)


def text_points(features: Mapping[str, object], texts: Sequence[str], labels, *, dataset: str = "",
                categories=None) -> EmbeddingPoints:
    """One point per prompt: ``features`` {name: [T, D]} of the prompts ``texts`` [T]; labels [T]
    (0 a normal-state prompt, 1 an anomalous-state one)."""
    labels = np.asarray(_array(labels, "labels")).astype(int).reshape(-1)
    texts = list(texts)
    if len(texts) != len(labels):
        raise ValueError(f"got {len(texts)} texts for {len(labels)} labels")
    table = pd.DataFrame({"dataset": dataset, "category": _per_item(categories, len(texts), "categories", ""),
                          "label": labels, "defect": ["anomalous prompt" if l else "normal prompt" for l in labels],
                          "image": -1, "patch": -1, "grid": 0, "text": texts})
    return EmbeddingPoints({str(k): v for k, v in features.items()}, table)


# -- the embedding explorer -------------------------------------------------------------------

def _colours(values: Sequence, by: str) -> tuple[list[str], dict[str, str]]:
    """A colour per point and the legend {value: colour}; labels are normal blue / anomalous red."""
    if by == "label":
        legend = {"normal": NORMAL_HEX, "anomalous": ANOMALOUS_HEX}
        return [ANOMALOUS_HEX if v else NORMAL_HEX for v in values], legend
    kinds = list(dict.fromkeys(str(v) for v in values))
    legend = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}
    return [legend[str(v)] for v in values], legend


def _legend_html(legend: Mapping[str, str]) -> str:
    return " ".join(f'<span style="white-space:nowrap"><span style="color:{c}">●</span> {html.escape(k)}</span>'
                    for k, c in legend.items())


def _outline_patch(axis, patch: int, grid: int, size: tuple[int, int]) -> None:
    row, column = divmod(patch, grid)
    step = (size[0] / grid, size[1] / grid)
    axis.add_patch(Rectangle((column * step[1] - 0.5, row * step[0] - 0.5), step[1], step[0], fill=False,
                             edgecolor="lime", linewidth=1.5))


class _Explorer:
    """What the explorers share: ``widget`` is what a notebook shows, and ``display(explorer)``
    shows it."""

    widget = None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class EmbeddingExplorer(_Explorer):
    """The widget :func:`embedding_explorer` returns; ``widget`` is what a notebook displays
    (``display(explorer)`` works too). ``controls`` holds the widgets by name, ``projections``
    the cache, ``shown`` the table rows of the points drawn (in drawing order), ``pinned`` the
    row last pinned (None before a click)."""

    def __init__(self, points, seed: int = 0, colour_by: str = "label", perplexity: int = 30,
                 projection: str = "pca", max_points: int | None = DEFAULT_MAX_POINTS):
        import bqplot
        import ipywidgets as widgets

        sets = {"": points} if isinstance(points, EmbeddingPoints) else dict(points)
        if not sets or not all(isinstance(p, EmbeddingPoints) for p in sets.values()):
            raise ValueError("points must be EmbeddingPoints, or a non-empty mapping of name -> EmbeddingPoints")
        if colour_by not in COLOUR_BY:
            raise ValueError(f"colour_by must be one of {COLOUR_BY}, got {colour_by!r}")
        projections = available_projections()
        if projection not in projections:
            raise ValueError(f"projection must be one of {projections}, got {projection!r}")
        if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, int)
                                       or max_points < 2):
            raise ValueError(f"max_points must be an int >= 2 or None, got {max_points!r}")
        self.sets, self.seed, self.max_points = sets, seed, max_points
        self.projections: dict[tuple, np.ndarray] = {}
        self.shown = np.zeros(0, dtype=int)
        self.pinned: int | None = None
        self._pinned_set: str | None = None
        self._holding = False

        names = list(sets)
        self.set_choice = widgets.Dropdown(options=names, value=names[0], description="set",
                                           layout=widgets.Layout(display="" if len(names) > 1 else "none"))
        self.dataset_choice = widgets.Dropdown(description="dataset")
        self.category_choice = widgets.Dropdown(description="category")
        self.layer_choice = widgets.Dropdown(description="features")
        self.projection_choice = widgets.Dropdown(options=[(projection_title(p), p) for p in projections],
                                                  value=projection, description="projection")
        self.perplexity = widgets.IntSlider(perplexity, min=2, max=100, description="perplexity",
                                            continuous_update=False, disabled=projection != "tsne")
        self.colour_choice = widgets.Dropdown(options=list(COLOUR_BY), value=colour_by, description="colour by")
        self.status = widgets.HTML()
        self.legend = widgets.HTML()
        self.hovered = widgets.HTML("<i>hover a point to see which sample it is; click it to pin it</i>")
        self.hover_picture = widgets.Image(format="png", layout=widgets.Layout(width="96px", height="96px"))
        self.hover_picture.add_class("clipad-hover-picture")
        self.pinned_label = widgets.HTML()
        self.pinned_picture = widgets.Image(format="png", layout=widgets.Layout(max_width="560px"))
        self.pinned_picture.add_class("clipad-pinned-picture")

        self._x, self._y = bqplot.LinearScale(), bqplot.LinearScale()
        self.scatter = bqplot.Scatter(
            x=np.zeros(0), y=np.zeros(0), scales={"x": self._x, "y": self._y}, default_size=28,
            stroke="white", stroke_width=0.4, tooltip=bqplot.Tooltip(fields=["name"], labels=["sample"]),
            display_names=False, interactions={"hover": "tooltip", "click": "select"},
            selected_style={"stroke": "black", "stroke-width": 2.5}, unselected_style={"opacity": 0.85})
        self.figure = bqplot.Figure(marks=[self.scatter], fig_margin={"top": 30, "bottom": 10, "left": 10, "right": 10},
                                    layout=widgets.Layout(width="480px", height="440px"), min_aspect_ratio=0.5)
        self.scatter.on_element_click(self._clicked)
        self.scatter.on_hover(self._hovered)

        self.set_choice.observe(self._set_changed, names="value")
        self.dataset_choice.observe(self._dataset_changed, names="value")
        self.projection_choice.observe(self._projection_changed, names="value")
        for control in (self.category_choice, self.layer_choice, self.perplexity):
            control.observe(self._redraw, names="value")
        self.colour_choice.observe(self._recolour, names="value")

        self.controls = {"set": self.set_choice, "dataset": self.dataset_choice, "category": self.category_choice,
                         "features": self.layer_choice, "projection": self.projection_choice,
                         "perplexity": self.perplexity, "colour": self.colour_choice, "scatter": self.scatter,
                         "figure": self.figure, "picture": self.pinned_picture, "pinned": self.pinned_label,
                         "hovered": self.hovered, "hover_picture": self.hover_picture}
        self._set_changed({"new": names[0]})
        side = widgets.VBox([self.pinned_label, self.pinned_picture], layout=widgets.Layout(min_width="360px"))
        self.widget = widgets.VBox([
            widgets.HBox([self.set_choice, self.dataset_choice, self.category_choice]),
            widgets.HBox([self.layer_choice, self.projection_choice, self.perplexity]),
            widgets.HBox([self.colour_choice, self.status]),
            widgets.HBox([widgets.VBox([self.figure, self.legend, widgets.HBox([self.hover_picture, self.hovered])]),
                          side]),
        ])
        self.widget.add_class("clipad-embedding-explorer")

    # the data of the current choice
    @property
    def points(self) -> EmbeddingPoints:
        return self.sets[self.set_choice.value]

    def _chosen_rows(self) -> np.ndarray:
        """Every table row the dataset and category controls choose."""
        table = self.points.table
        keep = np.ones(len(table), dtype=bool)
        if self.dataset_choice.value != ALL:
            keep &= (table["dataset"] == self.dataset_choice.value).to_numpy()
        if self.category_choice.value != ALL:
            keep &= (table["category"] == self.category_choice.value).to_numpy()
        return np.flatnonzero(keep)

    def _rows(self) -> np.ndarray:
        """The rows drawn: the chosen ones, or a seeded sample of ``max_points`` of them."""
        rows = self._chosen_rows()
        if self.max_points is not None and len(rows) > self.max_points:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_points, replace=False))
        return rows

    def _key(self) -> tuple:
        method = self.projection_choice.value
        return (self.set_choice.value, self.dataset_choice.value, self.category_choice.value,
                self.layer_choice.value, method, self.perplexity.value if method == "tsne" else None)

    def coordinates(self) -> np.ndarray:
        """[len(shown), 2]: the projection of the current choice, computed once per choice."""
        key = self._key()
        if key not in self.projections:
            rows = self._rows()
            if len(rows) < 2:
                raise ValueError(f"the choice {key[:3]} holds {len(rows)} point(s); a projection needs 2")
            values = self.points.features[self.layer_choice.value][rows]
            self.projections[key] = project_points(values, key[4], seed=self.seed, perplexity=self.perplexity.value)
        return self.projections[key]

    # control changes
    def _set_changed(self, change):
        points = self.sets[change["new"]]
        self._holding = True
        try:
            datasets = sorted({str(d) for d in points.table["dataset"]})
            self.dataset_choice.options = [ALL] + datasets if len(datasets) > 1 else datasets
            self.dataset_choice.value = self.dataset_choice.options[0]
            layer = self.layer_choice.value
            self.layer_choice.options = list(points.features)
            self.layer_choice.value = layer if layer in points.features else list(points.features)[0]
            self._dataset_changed({"new": self.dataset_choice.value}, draw=False)
        finally:
            self._holding = False
        self._redraw()

    def _dataset_changed(self, change, draw: bool = True):
        table = self.points.table
        chosen = table if change["new"] == ALL else table[table["dataset"] == change["new"]]
        categories = sorted({str(c) for c in chosen["category"]})
        holding, self._holding = self._holding, True
        try:
            self.category_choice.options = [ALL] + categories if len(categories) > 1 else categories
            self.category_choice.value = self.category_choice.options[0]
        finally:
            self._holding = holding
        if draw:
            self._redraw()

    def _projection_changed(self, change):
        self.perplexity.disabled = change["new"] != "tsne"  # PCA and UMAP do not use it
        self._redraw()

    def _redraw(self, *_):
        if self._holding:
            return
        method = self.projection_choice.value
        cached = self._key() in self.projections
        if not cached and method != "pca":
            self.status.value = f"<i>computing {projection_title(method)} …</i>"
        try:
            points = self.coordinates()
        except Exception as exc:
            self.status.value = f"<b>cannot project this choice</b>: {html.escape(str(exc))}"
            raise
        self.shown = self._rows()
        names = self.points.names()
        with self.scatter.hold_sync():
            self.scatter.x, self.scatter.y = points[:, 0], points[:, 1]
            self.scatter.names = [names[r] for r in self.shown]
            self._recolour()
            self._keep_pin()
        detail = f", perplexity {self.perplexity.value}" if method == "tsne" else ""
        self.figure.title = f"{self.layer_choice.value} · {projection_title(method)}{detail}"
        chosen = len(self._chosen_rows())
        count = (f"{len(self.shown)} of {chosen} points (a seeded sample; max_points={self.max_points})"
                 if chosen > len(self.shown) else f"{len(self.shown)} points")
        self.status.value = count + (" (projection cached)" if cached else "")

    def _keep_pin(self) -> None:
        """After a redraw: select the pinned point again where it is still drawn, else unpin it."""
        if self.pinned is not None and self._pinned_set == self.set_choice.value and self.pinned in self.shown:
            self.scatter.selected = [int(np.flatnonzero(self.shown == self.pinned)[0])]
            return
        self.scatter.selected = None
        if self.pinned is not None:
            self.pinned, self._pinned_set = None, None
            self.pinned_label.value, self.pinned_picture.value = "", b""

    def _recolour(self, *_):
        column = self.colour_choice.value
        values = self.points.table[column].to_numpy()[self.shown]
        colours, legend = _colours(values, column)
        self.scatter.colors = colours if len(colours) else [NORMAL_HEX]
        self.legend.value = _legend_html(legend)

    # pointer events
    def _clicked(self, _mark, event):
        index = (event or {}).get("data", {}).get("index")
        if index is not None:
            self.pin(int(index))

    def _hovered(self, _mark, event):
        index = (event or {}).get("data", {}).get("index")
        if index is not None and 0 <= int(index) < len(self.shown):
            row = int(self.shown[int(index)])
            self.hovered.value = f"hover: {html.escape(self.points.describe(row))}"
            self.hover_picture.value = self.thumbnail(row)

    def thumbnail(self, row: int, size: int = 96) -> bytes:
        """A small PNG of the image of table row ``row`` (its patch outlined), drawn with PIL so a
        hover costs milliseconds; empty for a text point or points without images."""
        from PIL import Image as PILImage, ImageDraw

        points, point = self.points, self.points.table.iloc[row]
        if point["image"] < 0 or points.images is None:
            return b""
        picture = np.clip(np.asarray(points.images[int(point["image"])], dtype=np.float64), 0, 1)
        image = PILImage.fromarray((picture * 255).round().astype(np.uint8)).resize((size, size), PILImage.BILINEAR)
        if point["patch"] >= 0:
            grid = int(point["grid"])
            r, c = divmod(int(point["patch"]), grid)
            step = size / grid
            ImageDraw.Draw(image).rectangle([c * step, r * step, (c + 1) * step - 1, (r + 1) * step - 1],
                                            outline=(0, 255, 0), width=2)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def pin(self, index: int) -> int:
        """Pin point ``index`` of the drawn points (what a click does): show its image with its
        patch outlined, its mask and its anomaly map. Returns its table row."""
        if not 0 <= index < len(self.shown):
            raise IndexError(f"point {index} is not drawn; {len(self.shown)} points are")
        row = int(self.shown[index])
        self.pinned, self._pinned_set = row, self.set_choice.value
        points = self.points
        point = points.table.iloc[row]
        self.pinned_label.value = f"<b>pinned</b>: {html.escape(points.describe(row))}"
        self.scatter.selected = [index]
        if point["image"] < 0 or points.images is None:
            self.pinned_picture.value = b""
            return row
        image = int(point["image"])
        panels = [("image", points.images[image], None)]
        if points.masks is not None:
            panels.append(("mask", points.masks[image] != 0, "gray"))
        if points.maps is not None:
            panels.append((points.map_title, points.maps[image], "jet"))
        figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.7), squeeze=False)
        for axis, (title, picture, cmap) in zip(axes[0], panels):
            if cmap == "jet":
                axis.imshow(picture, cmap=cmap, vmin=float(points.maps.min()), vmax=float(points.maps.max()))
            else:
                axis.imshow(picture, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            if point["patch"] >= 0:
                _outline_patch(axis, int(point["patch"]), int(point["grid"]), picture.shape[:2])
            axis.set_title(title, fontsize=8)
            axis.axis("off")
        figure.tight_layout()
        self.pinned_picture.value = _png_bytes(figure)
        plt.close(figure)
        return row

    def static_figure(self):
        """The current view as a matplotlib figure (for :func:`save_figure`)."""
        points = self.coordinates()
        colours, legend = _colours(self.points.table[self.colour_choice.value].to_numpy()[self.shown],
                                   self.colour_choice.value)
        figure, axis = plt.subplots(figsize=(4.2, 3.8))
        axis.scatter(points[:, 0], points[:, 1], s=8, c=colours)
        for name, colour in legend.items():
            axis.scatter([], [], s=12, c=colour, label=name)
        axis.legend(fontsize=7, loc="best")
        axis.set_title(self.figure.title, fontsize=9)
        axis.set_xticks([]); axis.set_yticks([])
        figure.tight_layout()
        return figure


def embedding_explorer(points, *, seed: int = 0, colour_by: str = "label", projection: str = "pca",
                       perplexity: int = 30, max_points: int | None = DEFAULT_MAX_POINTS) -> EmbeddingExplorer:
    """An interactive t-SNE / PCA (/ UMAP) explorer of embeddings, linked to their images.

    Args:
        points: :class:`EmbeddingPoints` (from :func:`patch_points`, :func:`image_points`,
            :func:`text_points`, :meth:`EmbeddingPoints.combine`), or {set name: EmbeddingPoints}
            for embeddings that are not one space (prompt variants, backbones); a "set" control
            then picks one.
        seed: random state of every projection; colour_by: one of :data:`COLOUR_BY`;
        projection, perplexity: the first view (t-SNE's perplexity is clipped below the point count).
        max_points: a view holding more points draws a seeded sample of this many (an SVG scatter
            of tens of thousands of patches would stall the browser and bloat the saved state);
            None draws all.
    Controls: set, dataset, category ("all" or one), features (layer / feature set), projection,
    perplexity (t-SNE only), colour by. A projection is computed once per (set, dataset, category,
    features, projection, perplexity) and cached, so recolouring or coming back to a view computes
    nothing; a pinned point stays pinned while it is drawn. Hover shows the sample under the pointer (a tooltip, and a line below
    the plot); a click pins the sample's image (patch outlined), mask and anomaly map.
    """
    return EmbeddingExplorer(points, seed=seed, colour_by=colour_by, projection=projection, perplexity=perplexity,
                             max_points=max_points)


# -- anomaly maps across methods ----------------------------------------------------------------

def _normalised(maps: np.ndarray) -> np.ndarray:
    """Maps min-max scaled over all of them to [0, 1], so one threshold serves every method."""
    low, high = float(maps.min()), float(maps.max())
    return (maps - low) / (high - low) if high > low else np.zeros_like(maps, dtype=np.float64)


def method_figure(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[str, np.ndarray],
                  scores: Mapping[str, float] | None, threshold: float, title: str = "", opacity: float = 0.5):
    """One sample: the image with its ground truth outlined (lime), then each method's map
    (already scaled to [0, 1]) over the image, the pixels at or above ``threshold`` outlined (white)."""
    columns = 1 + len(maps)
    figure, axes = plt.subplots(1, columns, figsize=(2.5 * columns, 2.8), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    if mask is not None and mask.any():
        axes[0].contour(mask, levels=[0.5], colors="lime", linewidths=0.9)
    axes[0].set_title(title or "image · ground truth", fontsize=8)
    for axis, (method, values) in zip(axes[1:], maps.items()):
        axis.imshow(image)
        axis.imshow(values, cmap="jet", alpha=opacity, vmin=0.0, vmax=1.0)
        if (values >= threshold).any() and (values < threshold).any():
            axis.contour(values >= threshold, levels=[0.5], colors="white", linewidths=0.9)
        score = f"\nscore {scores[method]:.3f}" if scores is not None else ""
        axis.set_title(f"{method}{score}", fontsize=8)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    return figure


class MethodExplorer(_Explorer):
    """The widget :func:`method_explorer` returns (``widget`` to display; ``controls`` by name)."""

    def __init__(self, images, masks, maps: Mapping[str, object], scores: Mapping[str, object] | None = None,
                 titles: Sequence[str] | None = None, threshold: float = 0.5, opacity: float = 0.5):
        import ipywidgets as widgets

        if not isinstance(maps, Mapping) or not maps:
            raise ValueError("maps must be a non-empty mapping of method -> [N, S, S]")
        count = len(_array(images, "images"))
        self.images, self.masks, _ = _pictures(images, masks, None, count)
        self.maps = {}
        for method, values in maps.items():
            values = _array(values, f"maps[{method!r}]")
            if values.shape != (count, *self.images.shape[1:3]):
                raise ValueError(f"maps[{method!r}] must be [N, S, S] = {[count, *self.images.shape[1:3]]} like the "
                                 f"images, got {list(values.shape)}")
            self.maps[str(method)] = _normalised(values.astype(np.float64))
        self.scores = None
        if scores is not None:
            if set(map(str, scores)) != set(self.maps):
                raise ValueError(f"scores must name the same methods as maps {sorted(self.maps)}, got {sorted(scores)}")
            self.scores = {str(m): _array(v, f"scores[{m!r}]").astype(float).reshape(-1) for m, v in scores.items()}
            for method, values in self.scores.items():
                if len(values) != count:
                    raise ValueError(f"scores[{method!r}] has {len(values)} values for {count} samples")
        self.titles = list(titles) if titles is not None else [f"sample {i}" for i in range(count)]
        if len(self.titles) != count:
            raise ValueError(f"got {len(self.titles)} titles for {count} samples")

        self.sample = widgets.IntSlider(0, min=0, max=count - 1, description="sample")
        self.previous = widgets.Button(description="◀", tooltip="previous sample (or ← on the slider)",
                                       layout=widgets.Layout(width="40px"))
        self.next = widgets.Button(description="▶", tooltip="next sample (or → on the slider)",
                                   layout=widgets.Layout(width="40px"))
        self.threshold = widgets.FloatSlider(threshold, min=0.0, max=1.0, step=0.01, description="threshold",
                                             tooltip="outline pixels whose min-max scaled score is at least this")
        self.opacity = widgets.FloatSlider(opacity, min=0.0, max=1.0, step=0.05, description="opacity")
        self.picture = widgets.Image(format="png")
        self.previous.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(1))
        for control in (self.sample, self.threshold, self.opacity):
            control.observe(self.render, names="value")
        self.controls = {"sample": self.sample, "previous": self.previous, "next": self.next,
                         "threshold": self.threshold, "opacity": self.opacity, "picture": self.picture}
        self.render()
        self.widget = widgets.VBox([widgets.HBox([self.previous, self.sample, self.next]),
                                    widgets.HBox([self.threshold, self.opacity]), self.picture])
        self.widget.add_class("clipad-method-explorer")

    def step(self, by: int) -> None:
        """Move the sample slider by ``by`` (wrapping around), as the ◀ ▶ buttons do."""
        self.sample.value = (self.sample.value + by) % (self.sample.max + 1)

    def render(self, *_):
        i = self.sample.value
        figure = method_figure(self.images[i], None if self.masks is None else self.masks[i],
                               {m: v[i] for m, v in self.maps.items()},
                               None if self.scores is None else {m: v[i] for m, v in self.scores.items()},
                               self.threshold.value, self.titles[i], self.opacity.value)
        self.picture.value = _png_bytes(figure)
        plt.close(figure)


def method_explorer(images, masks, maps: Mapping[str, object], scores: Mapping[str, object] | None = None,
                    titles: Sequence[str] | None = None, threshold: float = 0.5,
                    opacity: float = 0.5) -> MethodExplorer:
    """The same samples under every method, side by side.

    images [N, S, S, 3] in [0, 1]; masks [N, S, S] (or None); maps {method: [N, S, S]}; scores
    {method: [N]} image scores (optional, shown in the titles); titles [N]. Each method's maps are
    min-max scaled over the N samples, so one ``threshold`` in [0, 1] outlines every method's
    highest-scoring pixels. Controls: sample slider (← / → when focused), ◀ ▶ buttons, threshold,
    overlay opacity.
    """
    return MethodExplorer(images, masks, maps, scores, titles, threshold, opacity)


# -- the run browser ------------------------------------------------------------------------------

def worst_samples(samples: Mapping[str, Sequence], count: int = 4) -> tuple[list[int], list[int]]:
    """(false positives, false negatives) of a record's per-image scores: the ``count`` normal
    images scored highest, and the ``count`` anomalous images scored lowest, worst first."""
    scores = np.asarray(samples.get("score", []), dtype=float)
    labels = np.asarray(samples.get("label", []), dtype=int)
    if len(scores) != len(labels):
        raise ValueError(f"a record's samples have {len(scores)} scores and {len(labels)} labels")
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    positives = normal[np.argsort(-scores[normal], kind="stable")][:count]
    negatives = anomalous[np.argsort(scores[anomalous], kind="stable")][:count]
    return positives.tolist(), negatives.tolist()


def _record_html(record) -> str:
    metrics = "".join(f"<tr><td>{html.escape(k)}</td><td>{'—' if v is None else f'{100 * v:.2f}'}</td></tr>"
                      for k, v in record.metrics.items())
    timings = ", ".join(f"{k} {v:.3g}" for k, v in record.timings.items() if isinstance(v, (int, float)))

    def block(title: str, value) -> str:
        return (f"<details><summary>{title}</summary><pre style='font-size:11px;max-height:220px;overflow:auto'>"
                f"{html.escape(json.dumps(value, indent=1, sort_keys=True, default=str))}</pre></details>")

    return (f"<b>{html.escape(record.run_name)}</b> · {html.escape(record.dataset)}/{html.escape(record.category)} · "
            f"seed {record.seed} · {html.escape(record.setting)}<br>"
            f"<table style='font-size:12px'><tr><th>metric</th><th>%</th></tr>{metrics}</table>"
            f"timings (s): {html.escape(timings) or '—'}<br>device: {html.escape(record.device or '—')} · commit "
            f"{html.escape(str(record.git_commit))} · {html.escape(record.created)}"
            + block("config", record.config) + block("protocol", record.protocol) + block("identity", record.identity))


class RunBrowser(_Explorer):
    """The widget :func:`run_browser` returns (``widget`` to display; ``cells`` maps (run,
    dataset, category) of the dataset shown to its button; ``select`` picks a cell as a click does)."""

    def __init__(self, records, roots, metric: str = "image_auroc", worst: int = 4):
        import ipywidgets as widgets

        from ..data.sample import load_image, load_mask

        self._load_image, self._load_mask = load_image, load_mask
        self.records = list(records)
        if not self.records:
            raise ValueError("run_browser needs at least one run record (results.load_records(results_dir))")
        self.roots, self.worst = roots, worst
        metrics = sorted({m for r in self.records for m, v in r.metrics.items() if v is not None})
        if metric not in metrics:
            raise ValueError(f"no record has the metric {metric!r}; they have {metrics}")
        self.by_cell: dict[tuple[str, str, str], list] = {}
        for record in self.records:
            self.by_cell.setdefault((record.run_name, record.dataset, record.category), []).append(record)
        self.metric = widgets.Dropdown(options=metrics, value=metric, description="metric")
        self.seed = widgets.Dropdown(description="seed")
        self.details = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.note = widgets.HTML()
        datasets = sorted({key[1] for key in self.by_cell})
        self.dataset = widgets.Dropdown(options=datasets, value=datasets[0], description="dataset",
                                        layout=widgets.Layout(display="" if len(datasets) > 1 else "none"))
        self.table = widgets.GridBox(layout=widgets.Layout(grid_gap="2px 4px"))
        self.cells: dict[tuple[str, str, str], object] = {}
        self.selected: tuple[str, str, str] | None = None
        self._choosing = False
        self.metric.observe(lambda _: self._label_cells(), names="value")
        self.seed.observe(lambda _: self._show(), names="value")
        self.dataset.observe(self._dataset_changed, names="value")
        self._build_grid()
        self.select(*next(iter(self.cells)))
        self.widget = widgets.VBox([widgets.HBox([self.dataset, self.metric]), self.table, self.seed, widgets.HBox([
            widgets.VBox([self.details], layout=widgets.Layout(width="420px")),
            widgets.VBox([self.note, self.picture])])])
        self.widget.add_class("clipad-run-browser")

    def _build_grid(self) -> None:
        """The table of the chosen dataset: runs × its categories (one dataset at a time, so a paper
        results folder of 14 datasets does not become thousands of buttons)."""
        import ipywidgets as widgets

        dataset = self.dataset.value
        keys = [key for key in self.by_cell if key[1] == dataset]
        runs, categories = sorted({k[0] for k in keys}), sorted({k[2] for k in keys})
        self.cells, self.selected = {}, None
        grid = [widgets.HTML("<b>run</b>")] + [widgets.HTML(f"<b>{html.escape(c)}</b>") for c in categories]
        for run in runs:
            grid.append(widgets.HTML(html.escape(run)))
            for category in categories:
                key = (run, dataset, category)
                if key not in self.by_cell:
                    grid.append(widgets.HTML("·"))
                    continue
                button = widgets.Button(layout=widgets.Layout(width="auto"))
                button.on_click(lambda _, key=key: self.select(*key))
                self.cells[key] = button
                grid.append(button)
        self.table.children = grid
        self.table.layout.grid_template_columns = f"max-content repeat({len(categories)}, minmax(64px, max-content))"
        self._label_cells()

    def _dataset_changed(self, _change) -> None:
        self._build_grid()
        if not self._choosing:
            self.select(*next(iter(self.cells)))

    def _label_cells(self):
        for key, button in self.cells.items():
            values = [r.metrics.get(self.metric.value) for r in self.by_cell[key]]
            values = [v for v in values if v is not None]
            button.description = f"{100 * np.mean(values):.1f}" if values else "—"
            button.tooltip = f"{key[0]} on {key[1]}/{key[2]}: {self.metric.value}, mean of {len(values)} seed(s)"

    def select(self, run: str, dataset: str, category: str) -> None:
        """Show the cell (run, dataset, category): its seeds, its record, its worst samples."""
        key = (run, dataset, category)
        if key not in self.by_cell:
            raise KeyError(f"no record of {run} on {dataset}/{category}")
        if dataset != self.dataset.value:  # show that dataset's table first
            self._choosing = True
            try:
                self.dataset.value = dataset
            finally:
                self._choosing = False
        if self.selected in self.cells:
            self.cells[self.selected].button_style = ""
        self.selected = key
        self.cells[key].button_style = "info"
        seeds = sorted(r.seed for r in self.by_cell[key])
        self._choosing = True  # one picture per selection, not one per seed-control change
        try:
            self.seed.options = seeds
            self.seed.value = seeds[0]
        finally:
            self._choosing = False
        self._show()

    @property
    def record(self):
        """The record shown (the selected cell at the chosen seed)."""
        return next(r for r in self.by_cell[self.selected] if r.seed == self.seed.value)

    def _root(self, dataset: str) -> Path | None:
        if callable(self.roots):
            return Path(self.roots(dataset))
        root = self.roots.get(dataset) if isinstance(self.roots, Mapping) else None
        return None if root is None else Path(root)

    def _worst_picture(self, record) -> bytes:
        """The PNG of the record's worst samples (raises what reading the dataset raises)."""
        root = self._root(record.dataset)
        if root is None:
            raise LookupError(f"no dataset root given for {record.dataset!r}")
        positives, negatives = worst_samples(record.samples, self.worst)
        figure = self.worst_figure(record, root, positives, negatives)
        try:
            return _png_bytes(figure)
        finally:
            plt.close(figure)

    def _show(self):
        if self._choosing or self.selected is None or self.seed.value is None:
            return
        record = self.record
        self.details.value = _record_html(record)
        if not record.samples:
            self.note.value = ("<i>this record keeps no per-image scores (it predates them): re-run it without resume "
                               "to see its worst samples</i>")
            self.picture.value = b""
            return
        try:
            self.picture.value = self._worst_picture(record)
        except Exception as exc:  # a moved or missing dataset copy: say so, keep the record shown
            self.note.value = f"<i>cannot show the worst samples: {html.escape(f'{type(exc).__name__}: {exc}')}</i>"
            self.picture.value = b""
            return
        self.note.value = (f"worst false positives (normal, highest score) and false negatives (anomalous, lowest "
                           f"score) of {len(record.samples['score'])} test images")

    def worst_figure(self, record, root: Path, positives: list[int], negatives: list[int]):
        samples = record.samples
        order = np.argsort(-np.asarray(samples["score"], dtype=float), kind="stable")
        rank = np.empty(len(order), dtype=int)
        rank[order] = np.arange(1, len(order) + 1)
        columns = max(len(positives), len(negatives), 1)
        figure, axes = plt.subplots(2, columns, figsize=(1.9 * columns, 4.3), squeeze=False)
        for row, (name, chosen) in enumerate((("false positive", positives), ("false negative", negatives))):
            for column in range(columns):
                axis = axes[row, column]
                axis.axis("off")
                if column >= len(chosen):
                    continue
                i = chosen[column]
                image = self._load_image(root / samples["image"][i])
                axis.imshow(image)
                if samples["mask"][i]:
                    mask = self._load_mask(root / samples["mask"][i], image.shape[:2])
                    if mask.any():
                        axis.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
                axis.set_title(f"{name}\n{samples['defect'][i]} · {samples['score'][i]:.3f}\nrank {rank[i]}/{len(rank)}",
                               fontsize=7)
        figure.tight_layout()
        return figure


def run_browser(records, roots: Mapping[str, object] | Callable[[str], object], metric: str = "image_auroc",
                worst: int = 4) -> RunBrowser:
    """Browse run records as a table: for the chosen dataset, one button per (run, category)
    showing ``metric``'s mean over seeds; a click shows that cell's record (metrics, timings,
    device, commit; config, protocol and identity folded) for the chosen seed, and its ``worst``
    false positives and negatives with their scores and ranks, read from the dataset files.

    records: :class:`~clipad_lib.results.RunRecord` list (``load_records(results_dir)``);
    roots: {record dataset name: the dataset's root folder}, or a function of the name.
    """
    return RunBrowser(records, roots, metric, worst)
