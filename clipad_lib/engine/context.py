"""The setup every notebook repeats, in one place: results folders, data by name (with the smoke
profile's synthetic stand-ins), the paper's reported numbers, the feature cache, tables and figures.

``standins`` maps a real dataset name to synthetic categories: in the smoke profile every dataset
a table names is read as the synthetic set restricted to those categories, under the name
``synthetic-as-<dataset>``, so a notebook runs end to end on CPU; tables map it back to the real
name and mark the numbers as not comparable with the paper's. In the paper profile ``standins``
is None and every dataset is the real copy under ``$CLIPAD_DATA``, checked against its manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .. import paths
from ..data import SYNTHETIC, AnomalyDataset, dataset_root, load_dataset, load_manifest
from ..feature_cache import FeatureCache
from ..metrics.suite import IMAGE_METRICS, PIXEL_METRICS
from ..results import RunRecord, paper_vs_ours, records_frame, write_table
from ..seeding import seed_everything
from .evaluate import check_precision
from .grid import Experiment, ExperimentResult, run_experiment

STANDIN_PREFIX = "synthetic-as-"


@cache
def _manifest(name: str):
    return load_manifest(name)


@dataclass
class NotebookContext:
    profile: str
    results_dir: Path
    device: str = "cpu"
    resume: bool = False
    paper: str | None = None
    data_root: str | None = None          # the folder of a single-dataset notebook's dataset
    standins: Mapping[str, Sequence[str]] | None = None
    batch_size: int = 8
    aupro_variant: str = "mvtec"
    precision: str = "fp32"               # evaluation precision: "fp32", or autocast "bf16" / "fp16" (CUDA)
    _datasets: dict = field(default_factory=dict, repr=False)
    _subsets: dict = field(default_factory=dict, repr=False)

    @property
    def figures_dir(self) -> Path:
        return self.results_dir / "figures"

    @property
    def tables_dir(self) -> Path:
        return self.results_dir / "tables"

    # -- data -------------------------------------------------------------------------------

    def subset(self, alias: str, name: str, categories: Sequence[str] | None) -> str:
        """Name some categories of dataset ``name`` as ``alias`` (e.g. auxiliary and test categories
        of one dataset); ``ctx.dataset(alias)`` then reads them, still named ``name``."""
        self._subsets[alias] = (name, list(categories) if categories else None)
        return alias

    def dataset(self, name: str, split: str = "test",
                categories: Sequence[str] | None = None) -> tuple[AnomalyDataset, Path]:
        """(dataset, its root) by manifest name (or a :meth:`subset` alias); a stand-in in the
        smoke profile (see module doc).

        A real dataset is read from ``data_root`` (when given) or ``$CLIPAD_DATA/<dirname>``; a
        missing copy fails naming its manifest and download hint.
        """
        if name in self._subsets:
            alias = name
            name, chosen = self._subsets[name]
            if chosen:
                kept = [c for c in chosen if not categories or c in categories]
                if not kept:
                    raise KeyError(f"{alias!r} holds the categories {chosen}, none of {list(categories)}")
                categories = kept
        key = (name, split, tuple(categories) if categories else None)
        if key not in self._datasets:
            if self.standins is not None and name != SYNTHETIC:
                if name not in self.standins:
                    raise KeyError(f"the {self.profile} profile maps no synthetic stand-in to {name!r}; "
                                   f"stand-ins: {sorted(self.standins)} (profiles/{self.profile}.yaml)")
                chosen = [c for c in self.standins[name] if not categories or c in categories]
                if not chosen:
                    raise KeyError(f"the stand-in of {name!r} has the categories {list(self.standins[name])}, "
                                   f"none of {list(categories)} (profiles/{self.profile}.yaml)")
                root = dataset_root(SYNTHETIC)
                dataset = load_dataset(SYNTHETIC, split, root=root, categories=chosen)
                dataset = AnomalyDataset(STANDIN_PREFIX + name, dataset.records, dataset.has_pixel_labels)
            else:
                root = dataset_root(name, self.data_root)
                dataset = load_dataset(name, split, root=root, categories=list(categories) if categories else None)
            self._datasets[key] = (dataset, root)
        return self._datasets[key]

    def root_of(self, dataset: str) -> Path:
        """The folder a run record's dataset name (``record.dataset``) reads from, for the run
        browser: the root this context loaded that dataset from, if it did; else the synthetic set
        for a smoke stand-in (``synthetic-as-visa``) or ``synthetic``, and the copy under
        ``$CLIPAD_DATA`` for a real dataset (``data_root`` names one notebook's own dataset, so it
        is not used for the records of others)."""
        for loaded, root in self._datasets.values():
            if loaded.name == dataset:
                return root
        if dataset.startswith(STANDIN_PREFIX) or dataset == SYNTHETIC:
            return dataset_root(SYNTHETIC)
        return dataset_root(dataset)

    @staticmethod
    def paper_name(dataset: str) -> str:
        """``synthetic-as-visa`` -> ``visa``; other names unchanged."""
        return dataset.removeprefix(STANDIN_PREFIX)

    @staticmethod
    def domains(names: Sequence[str]) -> dict[str, str]:
        """{dataset: its manifest's domain ("industrial" / "medical")}, for domain rows."""
        return {name: _manifest(name).domain for name in names}

    @property
    def comparable(self) -> bool:
        """Whether our numbers ran on the datasets the paper used (False on smoke stand-ins)."""
        return self.standins is None

    # -- runs and numbers -------------------------------------------------------------------

    def run(self, experiment: Experiment, keep_detectors: bool = False) -> ExperimentResult:
        return run_experiment(experiment, self, results_dir=self.results_dir, resume=self.resume, device=self.device,
                              batch_size=self.batch_size, aupro_variant=self.aupro_variant, precision=self.precision,
                              keep_detectors=keep_detectors)

    def ours(self, records: Sequence[RunRecord] | pd.DataFrame) -> pd.DataFrame:
        """A long frame of our numbers under the paper's dataset names, keeping per dataset only
        the metrics its real manifest can support (no image metrics where a dataset has no
        normal images, no pixel metrics without masks), as the paper's tables do."""
        frame = records if isinstance(records, pd.DataFrame) else records_frame(records)
        frame = frame.assign(dataset=frame["dataset"].map(self.paper_name))
        keep = []
        for name, metric in zip(frame["dataset"], frame["metric"]):
            manifest = _manifest(name)
            keep.append((metric in IMAGE_METRICS and manifest.has_image_labels) or
                        (metric in PIXEL_METRICS and manifest.has_pixel_labels) or
                        metric not in IMAGE_METRICS + PIXEL_METRICS)
        return frame[keep].reset_index(drop=True)

    @cached_property
    def reported(self) -> pd.DataFrame:
        """The paper's reported numbers (validated); empty without a paper."""
        from ..papers import load_reported

        if self.paper is None:
            raise ValueError("this notebook context has no paper; pass paper='adaclip' to notebook_context")
        return load_reported(self.paper)

    def compare(self, ours: pd.DataFrame, table: str, stem: str | None = None,
                reasons: Mapping[str, str] | None = None, **filters) -> pd.DataFrame:
        """``paper | ours | Δ`` for every number of ``table`` (e.g. ``"main:1"``) matching
        ``filters`` (column=value or column=[values]); written to ``tables/<stem>`` when given.
        ``reasons``: per method, why its empty rows were not run (see :func:`paper_vs_ours`)."""
        rows = self.reported[self.reported["table"] == table]
        if rows.empty:
            raise KeyError(f"{self.paper} reports no table {table!r}; its tables: "
                           f"{', '.join(sorted(set(self.reported['table'])))}")
        for column, value in filters.items():
            rows = rows[rows[column].isin(value if isinstance(value, (list, tuple, set)) else [value])]
        comparison = paper_vs_ours(ours, rows, comparable=self.comparable, reasons=reasons)
        if stem:
            self.save_table(comparison, stem)
        return comparison

    @cached_property
    def feature_cache(self) -> FeatureCache:
        """Frozen-encoder embeddings shared by every notebook (``$CLIPAD_CACHE/features``)."""
        return FeatureCache(paths.cache_dir() / "features")

    # -- outputs ----------------------------------------------------------------------------

    def save_table(self, table: pd.DataFrame, stem: str, display: pd.DataFrame | None = None):
        return write_table(table, self.tables_dir / stem, display=display if display is not None else table)

    def save_figure(self, figure, stem: str) -> Path:
        from ..viz import save_figure

        return save_figure(figure, self.figures_dir / f"{stem}.png")


def notebook_context(profile: str, *, results_dir: str | Path | None = None, device: str = "cpu",
                     resume: bool = False, paper: str | None = None, data_root: str | None = None,
                     standins: Mapping[str, Sequence[str]] | None = None, seed: int = 0, batch_size: int = 8,
                     aupro_variant: str = "mvtec", precision: str = "fp32", quiet: bool = False) -> NotebookContext:
    """The notebook's context: ``results/<profile>/`` (or ``results_dir``), the global RNG seeded
    once for the notebook's own drawings, and the data / numbers helpers above. ``precision``
    ("fp32", "bf16", "fp16") is the precision of every evaluation ``ctx.run`` makes."""
    check_precision(precision)  # a typo fails here, before any data is read
    seed_everything(seed)
    context = NotebookContext(profile, Path(results_dir) if results_dir else paths.results_dir(profile), device,
                              resume, paper, data_root, dict(standins) if standins else None, batch_size,
                              aupro_variant, precision)
    if not quiet:
        shown = f"; smoke stand-ins for {len(context.standins)} datasets" if context.standins else ""
        reduced = f" precision={precision}" if precision != "fp32" else ""
        print(f"profile={profile} device={device}{reduced} results -> {context.results_dir}{shown}")
    return context
