"""What each paper reported, as data: ``papers/<paper>/reported.csv``.

Columns: ``table, method, dataset, category, setting, metric, value, source`` — ``value`` as
printed in the paper (percent), ``source`` the table or section it comes from. Notebooks put
these beside our numbers with :func:`clipad_lib.results.paper_vs_ours`. Values are transcribed
from the papers (each CSV's ``source`` names the table); nothing here is computed.

A row's ``method`` is a registered method (:func:`clipad_lib.methods.list_methods`), optionally
with an ablation label in parentheses (``"clip_fsac (NSA)"``), or one of :data:`REPORTED_ONLY`:
the methods whose numbers the papers print and this workbook does not re-run (yet).
"""
from __future__ import annotations

from pathlib import Path

PAPERS_DIR = Path(__file__).parent

# Methods named in reported tables that are not (yet) implemented here, with what they are.
REPORTED_ONLY = {
    "saa": "SAA, Segment Any Anomaly without training (Cao et al., arXiv:2305.10724) — AdaCLIP Tab. 1-2",
    "dinov2": "DINOv2 with linear segmentation heads trained on auxiliary data — AdaCLIP Tab. 1-2",
    "sam": "SAM with linear segmentation heads trained on auxiliary data — AdaCLIP Tab. 1-2",
    "padim": "PaDiM (Defard et al., ICPR 2020 workshops) — CLIP-FSAC++ Tab. I-III",
    "SPADE": "SPADE (Cohen and Hoshen, arXiv:2005.02357) — CLIP-FSAC++ Tab. II-III",
    "CLIP-FSAC": "CLIP-FSAC, the conference version of CLIP-FSAC++ — CLIP-FSAC++ Tab. I-III",
    "GraphCore": "GraphCore (Xie et al., ICLR 2023) — CLIP-FSAC++ Tab. II-III",
    "RegAD": "RegAD (Huang et al., ECCV 2022) — CLIP-FSAC++ Tab. III",
    "AnomalyGPT": "AnomalyGPT (Gu et al., AAAI 2024) — CLIP-FSAC++ Tab. III",
    "AnoPLe": "AnoPLe — CLIP-FSAC++ Tab. III",
    "EfficientAD-S": "EfficientAD-S (Batzner et al., WACV 2024), full-shot — CLIP-FSAC++ Tab. IV",
    "FAIR": "FAIR, full-shot — CLIP-FSAC++ Tab. IV",
    "EdgRec": "EdgRec, full-shot — CLIP-FSAC++ Tab. IV",
    "DiffusionAD": "DiffusionAD (Zhang et al., arXiv:2303.08730), full-shot — CLIP-FSAC++ Tab. IV",
    "GLASS": "GLASS, full-shot — CLIP-FSAC++ Tab. IV",
    "CutPaste": "CutPaste (Li et al., CVPR 2021), full-shot — CLIP-FSAC++ Tab. IV",
    "MKD": "MKD (Salehi et al., CVPR 2021), full-shot — CLIP-FSAC++ Tab. IV",
}


def base_method(method: str) -> str:
    """``"clip_fsac (NSA)"`` -> ``"clip_fsac"``: the method without its ablation label."""
    return method.split(" (", 1)[0]


def available_papers() -> list[str]:
    return sorted(p.parent.name for p in PAPERS_DIR.glob("*/reported.csv"))


def reported_csv(paper: str) -> Path:
    """The reported-numbers CSV of a paper; an unknown paper lists the known ones."""
    path = PAPERS_DIR / paper / "reported.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no reported numbers for {paper!r}; available: {', '.join(available_papers()) or 'none yet'}")
    return path
