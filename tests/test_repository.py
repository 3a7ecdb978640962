"""The repository stands alone: nothing points outside it, and its two environments agree."""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".json", ".txt", ".cfg", ".sh", ""}
# A relative path that climbs out of the folder it is written in, or an absolute path into the
# workspace this repository was written in (example paths under /tmp or ~ are fine).
CLIMBING = re.compile(r"(?<![\w.])(?:\.\./)+[\w][\w./-]*")
OUTSIDE = re.compile(r"(?<![\w/])/work/[\w./-]+")


def _tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        files = [REPO / line for line in listed.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): every file
        files = [p for p in REPO.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return [f for f in files if f.is_file() and f.suffix in TEXT_SUFFIXES and f.stat().st_size < 2_000_000]


def test_no_project_file_points_outside_the_repository():
    offenders = []
    for path in _tracked_text_files():
        if path == Path(__file__).resolve():  # this file spells the patterns out
            continue
        text = path.read_text(errors="replace")
        for match in CLIMBING.finditer(text):
            target = (path.parent / match.group()).resolve()
            if REPO not in (target, *target.parents):
                offenders.append(f"{path.relative_to(REPO)}: {match.group()}")
        offenders += [f"{path.relative_to(REPO)}: {m.group()}" for m in OUTSIDE.finditer(text)]
        if "shared/seeds" in text or "DESIGN.md" in text:
            offenders.append(f"{path.relative_to(REPO)}: names the design or seed files of the workspace")
    assert not offenders, "files pointing outside the repository:\n" + "\n".join(offenders)


def _pins(requirements) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_environment_yml_lists_the_packages_of_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra])
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    assert environment["name"] == "clipad" and environment["channels"] == ["conda-forge"]
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    [pip_section] = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict)]
    assert "-e ." in pip_section  # the project itself, editable
    listed = _pins([r for r in pip_section if r != "-e ."])
    assert listed == wanted, (f"only in environment.yml: {sorted(set(listed.items()) - set(wanted.items()))}; "
                              f"only in pyproject.toml: {sorted(set(wanted.items()) - set(listed.items()))}")
    assert project["requires-python"] == ">=3.11"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = "python3.11 -m venv .venv && .venv/bin/pip install torch==2.14.1 torchvision==0.29.1 && " \
              ".venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q -n 2"
    assert command in readme and command in ci


def _git(repo: Path, *arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_notebooks_are_stripped_on_git_add_and_results_keep_their_outputs(tmp_path):
    import shutil
    import sys

    import nbformat
    import pytest
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.org")
    _git(repo, "config", "user.name", "test")
    shutil.copy(REPO / ".gitattributes", repo / ".gitattributes")
    executed = new_notebook(cells=[new_code_cell("1 + 1", execution_count=3,
                                                 outputs=[new_output("execute_result", {"text/plain": "2"},
                                                                     execution_count=3)])])
    for folder in ("notebooks", "results/paper"):
        (repo / folder).mkdir(parents=True)
        nbformat.write(executed, repo / folder / "x.ipynb")
    # The README's one command: it configures the filter and finds the attributes already there.
    subprocess.run([sys.executable, "-m", "nbstripout", "--install", "--attributes", ".gitattributes"], cwd=repo,
                   check=True)
    assert (repo / ".gitattributes").read_text() == (REPO / ".gitattributes").read_text()
    _git(repo, "add", "-A")
    staged = nbformat.reads(_git(repo, "show", ":notebooks/x.ipynb"), as_version=4)
    assert staged.cells[0].outputs == [] and staged.cells[0].execution_count is None
    kept = nbformat.reads(_git(repo, "show", ":results/paper/x.ipynb"), as_version=4)
    assert kept.cells[0].outputs and kept.cells[0].execution_count == 3
    assert nbformat.read(repo / "notebooks" / "x.ipynb", as_version=4).cells[0].outputs  # the working copy keeps them


def test_committed_notebooks_are_what_the_filter_writes():
    # So installing the filter never shows a tracked notebook as modified.
    import sys

    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        stripped = subprocess.run([sys.executable, "-m", "nbstripout", "-t"], input=path.read_text(),
                                  capture_output=True, text=True, check=True).stdout
        assert stripped == path.read_text(), f"{path.name}: run nbstripout {path} and commit it"
