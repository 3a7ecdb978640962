"""What each paper reported, as data: ``papers/<paper>/reported.csv``.

Columns: ``table, method, dataset, category, setting, metric, value, source`` — ``value`` as
printed in the paper (percent), ``source`` the table or section it comes from. Notebooks put
these beside our numbers with :func:`clipad_lib.results.paper_vs_ours`. Values are transcribed
from the papers in ``../shared/seeds``; nothing here is computed.
"""
from __future__ import annotations

from pathlib import Path

PAPERS_DIR = Path(__file__).parent


def available_papers() -> list[str]:
    return sorted(p.parent.name for p in PAPERS_DIR.glob("*/reported.csv"))


def reported_csv(paper: str) -> Path:
    """The reported-numbers CSV of a paper; an unknown paper lists the known ones."""
    path = PAPERS_DIR / paper / "reported.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no reported numbers for {paper!r}; available: {', '.join(available_papers()) or 'none yet'}")
    return path
