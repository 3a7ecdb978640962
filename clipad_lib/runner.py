"""Headless execution of the notebooks with papermill, one profile at a time."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from . import paths
from .profiles import profile_parameters

NOTEBOOKS_DIR = paths.REPO_ROOT / "notebooks"
DEFAULT_CELL_TIMEOUT_S = 4 * 3600  # paper-profile training cells run for hours; a hang still ends


@dataclass
class NotebookResult:
    notebook: Path
    output: Path
    ok: bool
    error: str = ""


def parse_parameter(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (``4``, ``[0, 1]``, ``null``, ``cuda``)."""
    if "=" not in text:
        raise ValueError(f"parameter {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def resolve_notebooks(names: Sequence[str]) -> list[Path]:
    """Notebook paths from names or paths; all of ``notebooks/`` in order when none are given."""
    if not names:
        return sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))
    resolved = []
    for name in names:
        candidates = [Path(name), NOTEBOOKS_DIR / name, NOTEBOOKS_DIR / f"{name}.ipynb"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            available = ", ".join(p.stem for p in sorted(NOTEBOOKS_DIR.glob("*.ipynb")))
            raise FileNotFoundError(f"no notebook {name!r}; available: {available}")
        resolved.append(found.resolve())
    return resolved


def notebook_parameters(notebook: Path, profile: str, overrides: dict, resume: bool,
                        results_dir: Path) -> dict:
    """The parameters papermill injects: the profile's ``common`` values the notebook declares,
    its own section of the profile (``profiles/<profile>.yaml``), results_dir/resume, overrides.

    A key of the notebook's own section or an override that the notebook does not declare is
    an error (a typo would silently do nothing).
    """
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    common, own = profile_parameters(profile, notebook.stem)
    for source, keys in (("override(s)", overrides), (f"profiles/{profile}.yaml section {notebook.stem!r}", own)):
        unknown = sorted(set(keys) - declared)
        if unknown:
            raise ValueError(f"{notebook.name} has no parameter(s) {unknown} ({source}); it declares {sorted(declared)}")
    values = {**{k: v for k, v in common.items() if k in declared}, **own,
              "results_dir": str(results_dir), "resume": resume, **overrides}
    return {key: value for key, value in values.items() if key in declared}


def run_notebooks(names: Sequence[str], profile: str, overrides: dict | None = None, resume: bool = False,
                  results_root: Path | None = None, progress: bool = True,
                  cell_timeout: int | None = DEFAULT_CELL_TIMEOUT_S) -> list[NotebookResult]:
    """Execute notebooks into ``results/<profile>/``; a failing notebook does not stop the others.

    A cell running longer than ``cell_timeout`` seconds fails its notebook (None: no limit).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    results_dir = Path(results_root) if results_root else paths.results_dir(profile)
    results_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for notebook in resolve_notebooks(names):
        output = results_dir / notebook.name
        parameters = notebook_parameters(notebook, profile, overrides or {}, resume, results_dir)
        print(f"[clipad] {notebook.name} ({profile}) -> {output}", flush=True)
        try:
            papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                                       cwd=str(notebook.parent), progress_bar=progress,
                                       execution_timeout=cell_timeout)
            results.append(NotebookResult(notebook, output, True))
        except TimeoutError as exc:  # nbclient's CellTimeoutError is a TimeoutError
            message = f"a cell ran past the {cell_timeout} s cell timeout: {exc}"
            print(f"[clipad] FAILED {notebook.name}: {message}", flush=True)
            results.append(NotebookResult(notebook, output, False, message))
        except PapermillExecutionError as exc:
            source = "\n".join("    " + line for line in (exc.source or "").splitlines()[:12])
            message = (f"cell {exc.cell_index} (execution count {exc.exec_count}) raised "
                       f"{exc.ename}: {exc.evalue}\n{source}")
            print(f"[clipad] FAILED {notebook.name}: {message}", flush=True)
            results.append(NotebookResult(notebook, output, False, message))
    return results
