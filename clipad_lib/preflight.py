"""``clipad check``: before GPU time is spent, say what each notebook needs and whether it is here.

For every selected notebook, from the parameters the profile (and ``-p``) would inject:

- **datasets**: every dataset the parameters name (lists, mappings, ``name:cat+cat`` subsets), plus
  the training sets of the zero-shot protocols the notebook runs (:data:`PROTOCOLS`), each
  verified against its manifest (layout, counts, masks; ``deep`` decodes every file), with the
  manifest's download hint when it is missing;
- **weights**: every backbone (each parameter mapping with a ``backbone``, and each method's own
  default where a method section names none) located without loading it
  (:mod:`clipad_lib.backbones.locate`), and every checkpoint file a parameter names;
- **device**: CUDA when the profile asks for it, and free GPU memory against a rough estimate
  (:func:`estimate_gpu_memory_gb`: a formula, not a measurement);
- **disk**: free space where results and caches go.

Nothing is loaded or downloaded; a problem is a line, never a traceback.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import paths
from .backbones.timm_vit import CHECKPOINT_SUFFIXES

# The zero-shot notebooks' protocols, by the parameter holding their test sets: the training sets
# they add are read too. tests/test_preflight.py checks this against the notebooks' sources.
PROTOCOLS = {
    "11_adaclip_main_tables": ("test_datasets", ("adaclip_protocol",)),
    "12_adaclip_ablations": ("test_datasets", ("adaclip_protocol", "swap_protocol")),
    "13_adaclip_analyses": ("datasets", ("adaclip_protocol",)),
    "14_adaclip_anomalyclip_protocol": ("test_datasets", ("adaclip_protocol", "anomalyclip_protocol")),
}
# Methods whose training back-propagates through the frozen image encoder (prompts inside it), so
# every layer's activations are kept; the others keep one layer's at a time.
TRAINS_THROUGH_IMAGE_ENCODER = {"adaclip", "maple"}
MIN_FREE_DISK_GB = {"smoke": 2.0, "paper": 20.0}  # records, executed notebooks, the feature cache


@dataclass
class Check:
    notebook: str
    kind: str        # dataset | weights | checkpoint | device | disk
    name: str
    ok: bool
    message: str
    hint: str = ""


@dataclass
class BackboneUse:
    method: str              # the parameter path that names it ("methods.adaclip", "cnn", "")
    backbone: str
    pretrained: str | None
    image_size: int | None
    batch_size: int | None


@dataclass
class Needs:
    notebook: str
    datasets: list[str] = field(default_factory=list)
    backbones: list[BackboneUse] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    device: str = "cpu"


@dataclass
class Report:
    profile: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def format(self) -> str:
        """One line per distinct need (with the notebooks that need it), grouped by kind; the
        device line is per notebook, as its memory estimate is."""
        groups: dict[tuple, list[str]] = {}
        first: dict[tuple, Check] = {}
        for check in self.checks:
            key = (check.kind, check.name, check.ok, check.message)
            groups.setdefault(key, [])
            if check.notebook not in groups[key]:
                groups[key].append(check.notebook)
            first.setdefault(key, check)
        lines = []
        if paths.data_root() is None and any(c.kind == "dataset" and not c.ok for c in self.checks):
            lines.append("CLIPAD_DATA is unset: set it to the folder that holds the datasets' folders "
                         "(clipad data list names them).")
        for kind in ("dataset", "weights", "checkpoint", "device", "disk"):
            keys = [k for k in groups if k[0] == kind]
            if not keys:
                continue
            lines.append(f"{kind}:")
            for key in keys:
                check, notebooks = first[key], groups[key]
                mark = "ok     " if check.ok else "MISSING"
                users = ", ".join(n.split("_", 1)[0] for n in notebooks)
                lines.append(f"  {mark} {check.name} [{users}]: {check.message}")
                if not check.ok and check.hint:
                    lines.append(f"          {check.hint}")
        missing = {(c.kind, c.name, c.message) for c in self.checks if not c.ok}
        total = {(c.kind, c.name, c.message) for c in self.checks}
        stems = list(dict.fromkeys(c.notebook for c in self.checks))
        lines.append(f"[notebooks: {', '.join(stems)}]")
        lines.append(f"{len(total) - len(missing)} of {len(total)} needs met, {len(missing)} missing "
                     f"(profile {self.profile})")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"profile": self.profile, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2)


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, value
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield path + (str(key),), key
            yield from _walk(item, path + (str(key),))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item, path)


def _dataset_names(parameters: Mapping) -> list[str]:
    from .data import list_manifests

    known = set(list_manifests())
    found = []
    for _, value in _walk({k: v for k, v in parameters.items() if k not in ("standins", "profile", "device")}):
        if isinstance(value, str):
            name = value.partition(":")[0]
            if name in known and name not in found:
                found.append(name)
    return found


def _protocol_training_sets(stem: str, parameters: Mapping) -> list[str]:
    from .engine import adaclip_protocol, anomalyclip_protocol

    entry = PROTOCOLS.get(stem)
    if entry is None or entry[0] not in parameters:
        return []
    tests = list(parameters[entry[0]])
    protocols = {"adaclip_protocol": adaclip_protocol, "anomalyclip_protocol": anomalyclip_protocol}
    found = []
    for name in entry[1]:
        if name in protocols:
            for pair in protocols[name](tests).pairs:
                found += [d for d in pair.train if d not in found]
    if "swap_protocol" in entry[1]:  # notebook 12's Tab. 5: ClinicDB / ColonDB / MVTec AD as auxiliary data
        found += [d for d in ("clinicdb", "colondb", "mvtec") if d not in found]
    return found


def _family(backbone: str) -> str:
    """"open_clip", or the timm module that defines the architecture (ResNets, ViTs, SAM ViTs)."""
    import open_clip
    import timm

    if backbone in open_clip.list_models():
        return "open_clip"
    return timm.models.model_entrypoint(backbone).__module__ if timm.is_model(backbone) else backbone


def _backbone_uses(parameters: Mapping) -> list[BackboneUse]:
    """Every backbone a notebook's parameters name: each mapping with a ``backbone`` key, and each
    method section (a mapping under a registered method's name) completed with its config's
    defaults. A method section naming no backbone takes its config's default only when no other
    mapping supplies a backbone of the same family (open_clip, or one timm module): notebooks hand such a
    section the shared one (``cnn`` for PatchCore, PaDiM and SPADE)."""
    from .methods import list_methods, method_entry

    methods = set(list_methods())
    explicit, defaulted = [], []
    for path, value in _walk(parameters):
        if not isinstance(value, Mapping):
            continue
        method = path[-1] if path and path[-1] in methods else None
        if "backbone" not in value and method is None:
            continue
        defaults = {}
        if method is not None:
            config = method_entry(method).config()
            defaults = {k: getattr(config, k) for k in ("backbone", "pretrained", "image_size", "batch_size")
                        if hasattr(config, k)}
        merged = {**defaults, **{k: v for k, v in value.items() if k in ("backbone", "pretrained", "image_size",
                                                                        "batch_size")}}
        if not isinstance(merged.get("backbone"), str):
            continue
        use = BackboneUse(".".join(path), merged["backbone"], merged.get("pretrained"),
                          merged.get("image_size", parameters.get("image_size")),
                          merged.get("batch_size", parameters.get("batch_size")))
        (explicit if "backbone" in value else defaulted).append(use)
    families = {_family(use.backbone) for use in explicit}
    return explicit + [use for use in defaulted if _family(use.backbone) not in families]


def notebook_needs(stem: str, parameters: Mapping) -> Needs:
    """What a notebook will read, from the parameters it will be given."""
    standins = parameters.get("standins") or {}
    datasets = _dataset_names(parameters) + [d for d in _protocol_training_sets(stem, parameters)]
    if standins:  # the smoke profile reads stand-ins: synthetic categories under the real names
        datasets = ["synthetic" if d in standins else d for d in datasets]
    datasets = list(dict.fromkeys(datasets))
    files = sorted({value for _, value in _walk(parameters) if isinstance(value, str)
                    and value.lower().endswith(CHECKPOINT_SUFFIXES)})
    return Needs(stem, datasets, _backbone_uses(parameters), files, str(parameters.get("device", "cpu")))


def estimate_gpu_memory_gb(use: BackboneUse) -> float | None:
    """A rough peak GPU memory in GiB for one backbone use, in fp32: the weights plus

    - when the method trains through the image encoder (prompts inside it): every layer's saved
      activations, s·b·h·(34 + 5·a·s/h) bytes per layer at 16 bits (Korthikanti et al., "Reducing
      activation recomputation in large transformer models", 2022), doubled for fp32;
    - otherwise one layer's working set (a dozen [b, s, h] tensors and an unfused [b, a, s, s]
      attention matrix) and the four layers' tokens the method keeps.

    s tokens, b batch, h width, a heads. A formula, not a measurement: no GPU has measured these
    notebooks yet, and the first GPU run's peak memory should replace it."""
    import open_clip

    from .backbones import architecture

    if use.backbone not in open_clip.list_models():
        return None
    config = open_clip.get_model_config(use.backbone) or {}
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if "width" not in vision:
        return None
    if not isinstance(vision.get("layers"), int):  # open_clip's ResNets give a list of stage depths
        return None
    arch = architecture(use.backbone)
    width, layers = int(vision["width"]), int(vision["layers"])
    heads = max(1, width // int(vision.get("head_width", 64)))
    text_width, text_layers = int(text.get("width", 512)), int(text.get("layers", 12))
    weights = 4 * (12 * layers * width ** 2 + 12 * text_layers * text_width ** 2)
    s = (int(use.image_size or arch.image_size) // arch.patch_size) ** 2 + 1
    b = int(use.batch_size or 1)
    if use.method.split(".")[-1] in TRAINS_THROUGH_IMAGE_ENCODER:
        activations = layers * 2 * s * b * width * (34 + 5 * heads * s / width)
    else:
        activations = 4 * (16 * b * s * width + b * heads * s * s)
    return (weights + activations) / 2 ** 30


def _dataset_check(stem: str, name: str, deep: bool) -> Check:
    from .data import SYNTHETIC, dataset_root, load_manifest, verify_dataset

    manifest = load_manifest(name)
    if name == SYNTHETIC:
        root = dataset_root(SYNTHETIC)
        if not (root / "GENERATED.json").is_file():
            return Check(stem, "dataset", name, True, f"generated on first use into {root} (about 5 s)")
        report = verify_dataset(name, root, deep=deep)
        return Check(stem, "dataset", name, report.ok, f"{root} " + ("matches its manifest" if report.ok else
                     "does not match its manifest: " + "; ".join(report.problems[:3])),
                     "delete it; it is generated again on first use")
    base = paths.data_root()
    if base is None:
        return Check(stem, "dataset", name, False, f"not found: CLIPAD_DATA is unset (the folder holding "
                     f"{manifest.default_dirname}/)", manifest_hint(manifest))
    if not (base / manifest.default_dirname).is_dir():
        return Check(stem, "dataset", name, False, f"not found at {base / manifest.default_dirname}",
                     manifest_hint(manifest))
    try:
        report = verify_dataset(name, deep=deep)
    except Exception as exc:  # a copy so broken that reading it fails: still one line
        return Check(stem, "dataset", name, False, f"{type(exc).__name__}: {exc}", manifest_hint(manifest))
    if report.ok:
        return Check(stem, "dataset", name, True, f"{report.root} matches its manifest")
    problems = report.problems
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return Check(stem, "dataset", name, False, f"{report.root} does not match its manifest: {shown}",
                 f"see clipad data verify {name}; " + manifest_hint(manifest))


def manifest_hint(manifest) -> str:
    return f"{manifest.title}: {manifest.download_hint} (data_manifests/{manifest.name}.yaml)"


def _device_check(stem: str, needs: Needs) -> Check:
    import torch

    if not needs.device.startswith("cuda"):
        return Check(stem, "device", needs.device, True, "runs on the CPU")
    estimates = [(use, estimate_gpu_memory_gb(use)) for use in needs.backbones]
    estimates = [(use, gb) for use, gb in estimates if gb is not None]
    peak = max(estimates, key=lambda item: item[1]) if estimates else None
    estimate = (f"estimated peak {peak[1]:.1f} GiB ({peak[0].method or 'the notebook'}: {peak[0].backbone} at "
                f"{peak[0].image_size} px, batch {peak[0].batch_size or 1}; a formula, not a measurement)") if peak else \
        "no memory estimate for its backbones"
    if not torch.cuda.is_available():
        return Check(stem, "device", needs.device, False, f"CUDA is not available here; {estimate}",
                      "check on a GPU node (e.g. srun --gpus=1 clipad check ...), or --skip-device on a login node, "
                      "or -p device=cpu to run it slowly")
    device = torch.device(needs.device)
    free, total = torch.cuda.mem_get_info(device)
    free_gb = free / 2 ** 30
    ok = peak is None or free_gb >= peak[1]
    return Check(stem, "device", needs.device, ok, f"{torch.cuda.get_device_name(device)}: {free_gb:.1f} of "
                  f"{total / 2 ** 30:.1f} GiB free; {estimate}", "" if ok else "use a larger GPU or a smaller batch_size")


def _free_gb(path: Path) -> float:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free / 2 ** 30


def _disk_check(stem: str, profile: str) -> Check:
    needed = MIN_FREE_DISK_GB.get(profile, 2.0)
    results, cache = paths.results_dir(profile), paths.cache_dir()
    results_gb, cache_gb = _free_gb(results), _free_gb(cache)
    ok = min(results_gb, cache_gb) >= needed
    return Check(stem, "disk", str(results), ok, f"{results_gb:.0f} GiB free for results, {cache_gb:.0f} GiB for the "
                 f"cache ({cache}); at least {needed:.0f} GiB wanted", "" if ok else "free some space or point "
                 "CLIPAD_RESULTS / CLIPAD_CACHE elsewhere")


def _guarded(stem: str, kind: str, name: str, make) -> Check:
    """A check that raised becomes a failed line naming the exception, never a traceback."""
    try:
        return make()
    except Exception as exc:  # preflight must report, not crash: every failure is a finding
        return Check(stem, kind, name, False, f"the check itself failed: {type(exc).__name__}: {exc}")


def check_notebooks(names: Sequence[str], profile: str, overrides: Mapping | None = None,
                    deep: bool = False, device: bool = True) -> Report:
    """Every need of every selected notebook (all when ``names`` is empty), checked once each;
    ``device=False`` skips CUDA and GPU memory (a login node)."""
    from .backbones.locate import locate_weights
    from .runner import plan_parameters, resolve_notebooks

    notebooks = resolve_notebooks(names)
    planned = plan_parameters(notebooks, profile, dict(overrides or {}), False, paths.results_dir(profile))
    checks: list[Check] = []
    seen: dict[tuple, Check] = {}
    for notebook, parameters in zip(notebooks, planned):
        stem = notebook.stem
        needs = notebook_needs(stem, parameters)

        def once(key: tuple, name: str, make) -> None:
            if key not in seen:
                seen[key] = _guarded(stem, key[0], name, make)
            earlier = seen[key]
            checks.append(Check(stem, earlier.kind, earlier.name, earlier.ok, earlier.message, earlier.hint))

        for name in needs.datasets:
            once(("dataset", name), name, lambda name=name: _dataset_check(stem, name, deep))
        for use in needs.backbones:
            def weights(use=use) -> Check:
                found = locate_weights(use.backbone, use.pretrained)
                return Check(stem, "weights", found.label, found.found, found.where, found.hint)
            once(("weights", use.backbone, use.pretrained), f"{use.backbone}/{use.pretrained}", weights)
        for file in needs.files:
            once(("checkpoint", file), file, lambda file=file: Check(
                stem, "checkpoint", file, Path(file).expanduser().is_file(),
                "found" if Path(file).expanduser().is_file() else "no such file", "pass an existing file"))
        if device:
            checks.append(_guarded(stem, "device", needs.device, lambda: _device_check(stem, needs)))
        once(("disk",), "disk", lambda: _disk_check(stem, profile))
    return Report(profile, checks)
