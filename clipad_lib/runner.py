"""Headless execution of the notebooks with papermill, one profile at a time."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from . import paths
from .io import atomic_write
from .jobs import JobState, job_fingerprint, now
from .profiles import profile_parameters

NOTEBOOKS_DIR = paths.REPO_ROOT / "notebooks"
DEFAULT_CELL_TIMEOUT_S = 4 * 3600  # paper-profile training cells run for hours; a hang still ends


LOCK_NAME = ".clipad-run.lock"


class ResultsFolderBusy(RuntimeError):
    """Another ``clipad run`` is writing into the same results folder."""


@contextlib.contextmanager
def results_folder_lock(results_dir: Path, notebooks: Sequence[str]):
    """Hold ``results_dir``'s run lock for the duration, or raise :class:`ResultsFolderBusy` at once.

    Two local runs into one folder would interleave their records, tables and executed copies.
    The lock is an ``flock`` on ``<results_dir>/.clipad-run.lock``, so it ends with its process
    (a killed run leaves nothing to clean up); the file says who holds it. SLURM jobs of one
    submission write into the folder together by design and do not take it.
    """
    path = Path(results_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}, "
                   f"running {', '.join(holder.get('notebooks', [])) or '?'}")
            raise ResultsFolderBusy(
                f"{results_dir} is in use by another `clipad run` ({who}). Wait for it to finish, or give this run "
                "its own folder: CLIPAD_RESULTS=/another/folder clipad run ..."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now(),
                                 "notebooks": list(notebooks)}))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


@dataclass
class NotebookResult:
    notebook: Path
    output: Path
    ok: bool
    error: str = ""


class _ParameterLoader(yaml.SafeLoader):
    """YAML as papermill's users write it: ``1e-4`` is a float (YAML 1.1 wants ``1.0e-4``)."""


_ParameterLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789."))


def parse_parameter(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (``4``, ``[0, 1]``, ``null``, ``cuda``, ``1e-4``)."""
    if "=" not in text:
        raise ValueError(f"parameter {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.load(value, Loader=_ParameterLoader)


def resolve_notebooks(names: Sequence[str]) -> list[Path]:
    """Notebook paths from names, paths or a unique number prefix (``11`` for
    ``11_adaclip_main_tables``); all of ``notebooks/`` in order when none are given. A notebook
    named twice runs once."""
    if not names:
        return sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))
    resolved = []
    stems = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    for name in names:
        candidates = [Path(name), NOTEBOOKS_DIR / name, NOTEBOOKS_DIR / f"{name}.ipynb"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            prefixed = [p for p in stems if p.stem.startswith(f"{name}_")]
            found = prefixed[0] if len(prefixed) == 1 else None
        if found is None:
            available = ", ".join(p.stem for p in stems)
            raise FileNotFoundError(f"no notebook {name!r}; available: {available}")
        if found.resolve() not in resolved:
            resolved.append(found.resolve())
    return resolved


def declared_parameters(notebook: Path) -> dict[str, object]:
    """``{name: default}`` of a notebook's parameters cell; a default that is not a literal is
    ``...`` (its type is then not checked)."""
    import ast

    import papermill

    declared = {}
    for name, info in papermill.inspect_notebook(str(notebook)).items():
        try:
            declared[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            declared[name] = ...
    return declared


def _kind(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list",
            dict: "dict"}.get(type(value), type(value).__name__)


def _check_type(notebook: Path, key: str, value, default, profile_value=None, source: str = "") -> None:
    """A value must have the type of the notebook's default or of the profile's value (None is
    always allowed: it means "the method's default" or "none" throughout the notebooks; an int is
    a float). A list's elements must fit the default's elements when those share one type."""
    references = [("the notebook's default", default), ("the profile's value", profile_value)]
    references = [(what, r) for what, r in references if r is not None and r is not ...]
    if value is None or not references or default is ...:
        return
    kinds = {_kind(r) for _, r in references}
    given = _kind(value)
    if not (given in kinds or (given == "int" and "float" in kinds)):
        shown = " and ".join(f"{what} {r!r}" for what, r in references)
        raise ValueError(f"{notebook.name}: parameter {key!r} ({source}) expects {' or '.join(sorted(kinds))} like "
                         f"{shown}; got {given} {value!r}" + (" (write floats with a dot or an exponent: 0.0001, "
                                                               "1e-4)" if given == "str" and "float" in kinds else ""))
    if given == "list":
        elements = {_kind(e) for _, r in references if isinstance(r, (list, tuple)) for e in r if e is not None}
        if len(elements) == 1:
            [kind] = elements
            wrong = [e for e in value if e is not None and _kind(e) != kind and not (kind == "float" and _kind(e) == "int")]
            if wrong:
                raise ValueError(f"{notebook.name}: parameter {key!r} ({source}) expects a list of {kind} like "
                                 f"{references[0][1]!r}; got {wrong[0]!r} ({_kind(wrong[0])}) in {value!r}")


def notebook_parameters(notebook: Path, profile: str, overrides: dict, resume: bool,
                        results_dir: Path, declared: dict | None = None) -> dict:
    """The parameters papermill injects: the profile's ``common`` values the notebook declares,
    its own section of the profile (``profiles/<profile>.yaml``), results_dir/resume, overrides.

    A key of the notebook's own section or an override that the notebook does not declare is an
    error (a typo would silently do nothing); so is a value whose type differs from the
    notebook's default and the profile's value (``seeds=notalist``), before anything runs.
    """
    declared = declared_parameters(notebook) if declared is None else declared
    common, own = profile_parameters(profile, notebook.stem)
    for source, keys in (("override(s)", overrides), (f"profiles/{profile}.yaml section {notebook.stem!r}", own)):
        unknown = sorted(set(keys) - set(declared))
        if unknown:
            raise ValueError(f"{notebook.name} has no parameter(s) {unknown} ({source}); it declares {sorted(declared)}")
    for key, value in own.items():
        _check_type(notebook, key, value, declared[key], source=f"profiles/{profile}.yaml")
    for key, value in overrides.items():
        _check_type(notebook, key, value, declared[key], own.get(key), "-p override")
    values = {**{k: v for k, v in common.items() if k in declared}, **own,
              "results_dir": str(results_dir), "resume": resume, **overrides}
    return {key: value for key, value in values.items() if key in declared}


def plan_parameters(notebooks: Sequence[Path], profile: str, overrides: dict, resume: bool,
                    results_dir: Path) -> list[dict]:
    """Every notebook's parameters, all checked before the first notebook starts.

    An override goes to the notebooks that declare it; one that no selected notebook declares is
    refused, and one that only some declare is announced (so a typo never passes silently).
    """
    declared = {notebook: declared_parameters(notebook) for notebook in notebooks}
    nowhere = sorted(k for k in overrides if not any(k in d for d in declared.values()))
    if nowhere and len(notebooks) > 1:  # (one notebook: notebook_parameters names it and what it declares)
        listing = "; ".join(f"{n.stem}: {', '.join(sorted(d))}" for n, d in declared.items())
        raise ValueError(f"no selected notebook has the parameter(s) {nowhere}; they declare: {listing}")
    if len(notebooks) > 1:
        for key in sorted(overrides):
            takers = [n.stem for n, d in declared.items() if key in d]
            if len(takers) < len(notebooks):
                print(f"[clipad] -p {key} applies to {', '.join(takers)} only (the others do not declare it)", flush=True)
    return [notebook_parameters(notebook, profile, {k: v for k, v in overrides.items()
                                                    if k in declared[notebook] or len(notebooks) == 1},
                                resume, results_dir, declared[notebook])
            for notebook in notebooks]


def _failure_message(exc: BaseException, cell_timeout: int | None) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        source = "\n".join("    " + line for line in (exc.source or "").splitlines()[:12])
        return (f"cell {exc.cell_index} (execution count {exc.exec_count}) raised "
                f"{exc.ename}: {exc.evalue}\n{source}")
    if isinstance(exc, TimeoutError):  # nbclient's CellTimeoutError is a TimeoutError
        return f"a cell ran past the {cell_timeout} s cell timeout: {exc}"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return f"interrupted ({type(exc).__name__})"
    return f"the kernel or papermill failed: {type(exc).__name__}: {exc}"  # e.g. nbclient's DeadKernelError


def _sign(path: Path) -> None:
    """Sign an executed notebook with Jupyter's notary (nbformat.sign), so that JupyterLab on this
    machine opens it trusted: its widgets' saved views and HTML outputs show without `jupyter trust`.
    Trust is per machine (the notary's secret lives in the user's Jupyter data folder); a reader
    elsewhere runs `jupyter trust <notebook>` or reads the HTML export."""
    import nbformat
    from nbformat.sign import NotebookNotary

    try:
        NotebookNotary().sign(nbformat.read(path, as_version=4))
    except Exception as exc:  # an unwritable signature store must not fail a good run
        print(f"[clipad] could not sign {path.name} ({type(exc).__name__}: {exc}); open it with `jupyter trust`",
              flush=True)


def export_html(executed: Path, output: Path | None = None) -> Path | None:
    """Write an executed notebook as HTML (nbconvert's ``lab`` template) beside it, atomically.

    nbclient saves the widgets' state in the notebook's metadata, and the template embeds it, so a
    reader without a kernel sees every widget's last picture and can move its controls (which
    change nothing without a kernel); the page loads the widget renderer from a CDN, like
    nbconvert's own exports. A failed export is reported and returns None: it never fails a good run.
    """
    import nbformat
    from nbconvert import HTMLExporter

    output = Path(output) if output is not None else executed.with_suffix(".html")
    output.unlink(missing_ok=True)  # an earlier run's page must not stand beside this run's notebook
    try:
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
        return atomic_write(output, body)
    except Exception as exc:
        print(f"[clipad] could not export {executed.name} to HTML ({type(exc).__name__}: {exc})", flush=True)
        return None


def execute_notebook(notebook: Path, parameters: dict, results_dir: Path, *, key: str | None = None,
                     output_dir: Path | None = None, progress: bool = True,
                     cell_timeout: int | None = DEFAULT_CELL_TIMEOUT_S, executor: str = "local",
                     batch_job_id: str | None = None) -> NotebookResult:
    """Execute one notebook (or shard) into ``output_dir/<key>.ipynb``, recording the job's state.

    The execution writes ``<key>.running.ipynb``; only a run that ends well replaces
    ``<key>.ipynb`` (so the last good executed copy survives a failed run) and its HTML export
    ``<key>.html`` (:func:`export_html`). A failed run is kept as
    ``<key>.failed.ipynb``, an interrupted one as ``<key>.interrupted.ipynb``; a run killed hard
    leaves ``<key>.running.ipynb`` and a ``running`` state that :mod:`clipad_lib.jobs` reports as
    killed. The state file (``results_dir/jobs/<key>.json``) says which.
    """
    import papermill

    key = key or notebook.stem
    output_dir = Path(output_dir or results_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final, running = output_dir / f"{key}.ipynb", output_dir / f"{key}.running.ipynb"
    state = JobState(key=key, notebook=notebook.stem, state="running", fingerprint=job_fingerprint(notebook, parameters),
                     output=str(running), executor=executor, batch_job_id=batch_job_id)
    state.write(results_dir)
    for stale in (output_dir / f"{key}.failed.ipynb", output_dir / f"{key}.interrupted.ipynb", running):
        stale.unlink(missing_ok=True)  # so a copy shown after this run is this run's
    try:
        papermill.execute_notebook(str(notebook), str(running), parameters=parameters, kernel_name="python3",
                                   cwd=str(notebook.parent), progress_bar=progress, execution_timeout=cell_timeout)
    except BaseException as exc:
        message = _failure_message(exc, cell_timeout)
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        kept = output_dir / f"{key}.{'interrupted' if interrupted else 'failed'}.ipynb"
        if running.exists():
            os.replace(running, kept)
        # (a run that failed before papermill wrote anything has no copy to show)
        state.state, state.ended, state.error = "failed", now(), message
        state.output = str(kept) if kept.exists() else ""
        state.write(results_dir)
        if interrupted:
            raise
        print(f"[clipad] FAILED {key}: {message}", flush=True)
        return NotebookResult(notebook, kept, False, message)
    _sign(running)
    os.replace(running, final)
    export_html(final)  # <key>.html, with the widget state
    state.state, state.ended, state.output = "done", now(), str(final)
    state.write(results_dir)
    return NotebookResult(notebook, final, True)


def run_notebooks(names: Sequence[str], profile: str, overrides: dict | None = None, resume: bool = False,
                  results_root: Path | None = None, progress: bool = True,
                  cell_timeout: int | None = DEFAULT_CELL_TIMEOUT_S) -> list[NotebookResult]:
    """Execute notebooks one after the other into ``results/<profile>/``; a failing notebook does
    not stop the others. Every notebook's parameters are checked before the first one starts, and
    the folder is locked against a second run (:func:`results_folder_lock`).

    A cell running longer than ``cell_timeout`` seconds fails its notebook (None: no limit).
    """
    results_dir = Path(results_root) if results_root else paths.results_dir(profile)
    results_dir.mkdir(parents=True, exist_ok=True)
    notebooks = resolve_notebooks(names)
    planned = list(zip(notebooks, plan_parameters(notebooks, profile, overrides or {}, resume, results_dir)))
    results = []
    with results_folder_lock(results_dir, [n.stem for n in notebooks]):
        for notebook, parameters in planned:
            print(f"[clipad] {notebook.name} ({profile}) -> {results_dir / notebook.name}", flush=True)
            results.append(execute_notebook(notebook, parameters, results_dir, progress=progress,
                                            cell_timeout=cell_timeout))
    return results
