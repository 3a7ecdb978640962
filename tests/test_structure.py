"""The library's joints: imports go one way, and only backbones/ knows open_clip's internals."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipad_lib"

# Each room may import rooms of its own layer or below, never above.
LAYERS = [
    {"io", "paths", "validation", "seeding", "host_memory"},
    {"feature_cache", "data", "metrics", "synthesis", "losses"},
    {"backbones", "training", "pretraining"},
    {"methods"},
    {"results", "papers"},
    {"engine", "viz", "profiles"},
    {"runner", "jobs", "cluster", "preflight", "cli"},
]
LAYER_OF = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}
# open_clip attributes that only backbones/ may touch.
OPEN_CLIP_INTERNALS = {"resblocks", "token_embedding", "positional_embedding", "ln_post", "ln_pre", "text_projection",
                       "attn_mask", "proj", "conv1", "class_embedding"}


def _room(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.stem != "__init__" else ""


def _imported_rooms(path: Path) -> set[str]:
    """Top-level clipad_lib rooms that ``path`` imports (absolute or relative)."""
    tree = ast.parse(path.read_text())
    package_parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    rooms = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[:len(package_parts) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            names = [target + [alias.name] for alias in node.names] if len(target) == 1 else [target]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in names:
            if parts[0] == "clipad_lib" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if _room(p))


def test_every_room_has_a_layer():
    rooms = {_room(p) for p in _modules()}
    assert rooms <= set(LAYER_OF), f"rooms without a layer in this test: {sorted(rooms - set(LAYER_OF))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way(path):
    room = _room(path)
    upward = {r for r in _imported_rooms(path) if r in LAYER_OF and LAYER_OF[r] > LAYER_OF[room]}
    assert not upward, f"{path.relative_to(PACKAGE)} ({room}) imports the higher rooms {sorted(upward)}"


def test_methods_never_import_engine_or_results():
    for path in (PACKAGE / "methods").glob("*.py"):
        assert not _imported_rooms(path) & {"engine", "results", "runner", "cli", "viz"}, path.name


def _foreign_private_accesses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        if private and not on_self:
            found.append(f"line {node.lineno}: .{node.attr}")
        if node.attr in OPEN_CLIP_INTERNALS or (node.attr == "visual" and isinstance(node.value, ast.Attribute)
                                                and node.value.attr == "model"):
            found.append(f"line {node.lineno}: .{node.attr} (open_clip internals)")
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "methods").glob("*.py")), ids=lambda p: p.name)
def test_methods_use_only_public_backbone_seams(path):
    assert not _foreign_private_accesses(path), f"{path.name}: {_foreign_private_accesses(path)}"


def test_importing_a_method_does_not_import_results_or_synthesis():
    code = ("import sys, clipad_lib.methods.clip_patch_memory, clipad_lib.methods.clip_fsac; "
            "print(sorted(m for m in sys.modules if m.startswith(('clipad_lib.results', 'clipad_lib.synthesis', "
            "'clipad_lib.engine'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
