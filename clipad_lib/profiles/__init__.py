"""Profiles are sets of notebook parameters, stored as data; they never fork the code path.

``profiles/<profile>.yaml`` has a ``common`` section (values any notebook may declare: profile,
device, data root) and one section per notebook, named by the notebook's file stem, holding
that notebook's own parameters without prefixes. A notebook receives ``common`` (the keys it
declares) and its own section (every key, which it must declare). YAML anchors share settings
between the notebooks of one paper. This is papermill's own parameter-file shape: a section is
what ``papermill -f`` takes.

``smoke``: the synthetic embedded dataset (and synthetic stand-ins for every real dataset a
table names), tiny random-init backbones with the paper backbones' code path, CPU, minutes.
``paper``: the real datasets under ``CLIPAD_DATA`` and the paper backbones on a GPU runner.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

PROFILES_DIR = Path(__file__).parent


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


@cache
def _load(profile: str) -> dict:
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown profile {profile!r}; choose one of {available_profiles()}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or set(data) - {"common", "notebooks", "shared", "shards"}:
        raise ValueError(f"{path} must hold the sections 'common', 'notebooks' (and 'shared' for anchors, "
                         f"'shards' for the batch jobs' split); it has {sorted(data) if isinstance(data, dict) else data!r}")
    return data


def profile_sections(profile: str) -> tuple[dict, dict[str, dict]]:
    """(common parameters, {notebook stem: its parameters}) of a profile."""
    data = _load(profile)
    return dict(data.get("common") or {}), {k: dict(v or {}) for k, v in (data.get("notebooks") or {}).items()}


def profile_parameters(profile: str, notebook: str | None = None) -> tuple[dict, dict]:
    """(common, own): the profile's common values and the section of ``notebook`` (a file stem;
    empty when the profile has none for it). Copies; the caller may change them."""
    common, notebooks = profile_sections(profile)
    return common, dict(notebooks.get(notebook, {})) if notebook else {}


def profile_shards(profile: str) -> dict[str, list[dict]]:
    """``{notebook stem: [shard axis, ...]}`` from the profile's ``shards`` section, each axis
    ``{"parameter": name, "groups": [[element, ...], ...] or None}`` (see :mod:`clipad_lib.cluster`)."""
    section = _load(profile).get("shards") or {}
    shards = {}
    for stem, axes in section.items():
        if not isinstance(axes, list):
            raise ValueError(f"profiles/{profile}.yaml shards.{stem} must be a list of axes, got {axes!r}")
        checked = []
        for axis in axes:
            if not isinstance(axis, dict) or "parameter" not in axis or set(axis) - {"parameter", "groups"}:
                raise ValueError(f"profiles/{profile}.yaml shards.{stem}: each axis is "
                                 f"{{parameter: name, groups: [[...], ...]}} (groups optional), got {axis!r}")
            groups = axis.get("groups")
            if groups is not None and not (isinstance(groups, list) and all(isinstance(g, list) for g in groups)):
                raise ValueError(f"profiles/{profile}.yaml shards.{stem}: groups must be a list of lists, got {groups!r}")
            checked.append({"parameter": axis["parameter"], "groups": groups})
        shards[stem] = checked
    return shards
