"""Evaluation throughput: ``predict`` images/s per method at batch 1 and larger batches.

Every method is built on its registry smoke configuration (``method_entry(name).smoke_config()``:
the tiny random-init CLIP ``clipad-tiny-ViT`` or a random-init ResNet-18), at ``--image-size``
(default 128, the smoke profile's resolution), fitted the way the tests fit it (``auxiliary``
methods: their smoke epochs on the synthetic ``tile`` test images; ``references`` methods: four
normal ``pill`` training images; zero-shot methods: nothing), then timed on ``pill`` test images
(a category the auxiliary training never saw), exactly as ``evaluate_detector`` calls it:
CPU tensors in, ``predict`` moves them to the device and returns CPU tensors.

Each (method, batch) point is warmed up once, then ``predict`` runs until ``--seconds`` have passed
(at least ``--min-reps`` calls); images/s = images predicted / wall time (``time.perf_counter``).
The best batch and its ratio to batch 1 are printed, one line per method. The machine is often
shared: compare runs made back to back, and read ``best_call_s`` in the JSON for a noise-free floor.

    python scripts/bench_eval.py                         # adaclip, aprilgan, winclip, anomalyclip, patchcore
    python scripts/bench_eval.py --methods adaclip --batches 1,8,32 --json bench.json
    python scripts/bench_eval.py --device cuda --precision bf16
    python scripts/bench_eval.py --official-adaclip /path/to/AdaCLIP [--official-python PY] [--official-images 8]

``--official-adaclip`` compares with the official AdaCLIP code instead, imported from that local
checkout (never copied here) as ``scripts/make_golden_fixtures.py`` runs it: both sides on the
golden fixtures' configuration (ViT-B-16 at 240 px, layers 3/6/9/12, prompt depth 4 and length 5,
20 HSF clusters) and the same seeded random weights, the official code at batch size 1 (the only one
its per-image dynamic text prompts allow) in a subprocess, this workbook's AdaCLIP at the
``--batches``. It prints the official images/s and the workbook's best-batch ratio to it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # no training progress bars between the result lines
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from clipad_lib.data import ensure_synthetic_dataset, load_dataset, load_sample  # noqa: E402
from clipad_lib.engine.evaluate import PRECISIONS, predict_with_precision  # noqa: E402
from clipad_lib.host_memory import reuse_freed_memory_for  # noqa: E402
from clipad_lib.methods import FitData, create_detector, method_entry  # noqa: E402

DEFAULT_METHODS = ("adaclip", "aprilgan", "winclip", "anomalyclip", "patchcore")
TEST_CATEGORY = "pill"        # timed images (as tests/test_method_contract.py)
AUXILIARY_CATEGORY = "tile"   # what auxiliary-trained methods fit on (never the test category)
REFERENCES = 4                # normal shots for reference-fitted methods


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: str) -> dict:
    info = {"torch": torch.__version__, "device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def parse_method(spec: str) -> tuple[str, str, str]:
    """"name" or "name:kind" -> (name, fit kind, label). By default "nothing" for methods that need
    no fit, else "auxiliary" where accepted, else "references"; "aprilgan:references" (few-shot
    APRIL-GAN) or "winclip:references" (WinCLIP+) choose another kind the method accepts."""
    name, _, kind = spec.partition(":")
    try:
        entry = method_entry(name)
    except KeyError as exc:  # an unknown name fails before anything is built, listing the registered ones
        raise SystemExit(exc.args[0]) from None
    default = next(k for k in ("nothing", "auxiliary", "references") if k in entry.fits_on)
    kind = kind or default
    if kind not in entry.fits_on:
        raise SystemExit(f"{name} fits on {', '.join(entry.fits_on)}, not {kind!r}")
    return name, kind, name if kind == default else f"{name}:{kind}"


def build(name: str, kind: str, image_size: int, device: str, fit: bool, train, test) -> tuple[object, float]:
    """The detector on its smoke config at ``image_size``, fitted as the tests fit it; returns (detector, fit s)."""
    entry = method_entry(name)
    detector = create_detector(name, entry.smoke_config(image_size=image_size, device=device))
    if not fit or kind == "nothing":
        return detector, 0.0
    start = time.perf_counter()
    if kind == "auxiliary":
        detector.fit(FitData(auxiliary=[test.subset(category=AUXILIARY_CATEGORY)], seed=0))
    else:
        records = train.subset(category=TEST_CATEGORY).records[:REFERENCES]
        images = torch.stack([detector.transform.image(load_sample(r).image) for r in records])
        detector.fit(FitData(reference_images=images, class_name=TEST_CATEGORY, seed=0))
    return detector, time.perf_counter() - start


def timed_images(detector, test, count: int) -> torch.Tensor:
    """``count`` transformed test images of TEST_CATEGORY (repeated when the category has fewer)."""
    records = test.subset(category=TEST_CATEGORY).records
    images = [detector.transform.image(load_sample(r).image) for r in records]
    return torch.stack([images[i % len(images)] for i in range(count)])


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_batch(detector, images: torch.Tensor, precision: str, seconds: float, min_reps: int,
               device: str, class_name: str = TEST_CATEGORY) -> dict:
    names = [class_name] * len(images)
    predict_with_precision(detector, images, names, precision)  # warm-up (allocations, text caches)
    synchronize(device)
    calls = []
    start = time.perf_counter()
    while True:
        began = time.perf_counter()
        predict_with_precision(detector, images, names, precision)
        synchronize(device)
        calls.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and len(calls) >= min_reps:
            break
    return {"images_per_s": len(images) * len(calls) / elapsed, "reps": len(calls), "seconds": elapsed,
            "best_call_s": min(calls), "best_images_per_s": len(images) / min(calls)}


FIXTURES_SCRIPT = Path(__file__).resolve().parent / "make_golden_fixtures.py"


def _fixtures():
    """scripts/make_golden_fixtures.py as a module: the shared weights, checkpoint and official builder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden_fixtures", FIXTURES_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_with_official_adaclip(args, batches: list[int]) -> dict:
    """This workbook's AdaCLIP against the official code on the golden configuration and weights."""
    import subprocess
    import tempfile

    fixtures = _fixtures()
    count = max(args.official_images, max(batches))
    rng = torch.Generator().manual_seed(fixtures.IMAGE_SEED)
    images = torch.randn(count, 3, fixtures.IMAGE_SIZE, fixtures.IMAGE_SIZE, generator=rng)
    with tempfile.TemporaryDirectory(prefix="bench-adaclip-") as folder:
        work = Path(folder)
        torch.save(fixtures.clip_state_dict(), work / "clip.pt")
        torch.save(fixtures.official_checkpoint("adaclip", fixtures.ADACLIP["seed"]), work / "adaclip_official.pth")
        torch.save(images, work / "images.pt")
        finished = subprocess.run([str(args.official_python), str(FIXTURES_SCRIPT), "--worker", "adaclip_timing",
                                   "--adaclip", str(Path(args.official_adaclip).resolve()), "--work", str(work),
                                   "--timing-images", str(args.official_images), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            raise SystemExit(f"the official AdaCLIP run failed:\n{finished.stderr[-3000:]}")
        official = json.loads(finished.stdout.strip().splitlines()[-1])
        from clipad_lib.methods.adaclip import AdaCLIPConfig, AdaCLIPDetector

        config = AdaCLIPConfig(backbone=fixtures.MODEL, pretrained=str(work / "clip.pt"), image_size=fixtures.IMAGE_SIZE,
                               layers=fixtures.LAYERS, prompt_length=fixtures.ADACLIP["prompt_length"],
                               prompt_depth=fixtures.ADACLIP["prompt_depth"],
                               hsf_clusters=fixtures.ADACLIP["hsf_clusters"], gaussian_sigma=fixtures.ADACLIP["sigma"])
        detector = AdaCLIPDetector(config).load_official_checkpoint(work / "adaclip_official.pth")
    name = fixtures.CLASS_NAMES["adaclip"][0]
    ours = {}
    for batch in batches:
        ours[batch] = time_batch(detector, images[:batch], "fp32", args.seconds, args.min_reps, "cpu", class_name=name)
    best = max(ours, key=lambda b: ours[b]["images_per_s"])
    ratio = ours[best]["images_per_s"] / official["images_per_s"]
    rates = "  ".join(f"b{b} {p['images_per_s']:6.2f}" for b, p in ours.items())
    print(f"official AdaCLIP  b1 {official['images_per_s']:6.2f} img/s ({official['images']} images)")
    print(f"clipad AdaCLIP    {rates} img/s | best b{best} = {ratio:.2f}x the official code "
          f"(batch 1: {ours[1]['images_per_s'] / official['images_per_s']:.2f}x)" if 1 in ours else
          f"clipad AdaCLIP    {rates} img/s | best b{best} = {ratio:.2f}x the official code", flush=True)
    return {"official": official, "ours": ours, "best_batch": best, "ratio_best_to_official": ratio}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated registered methods, each optionally name:fit-kind (e.g. "
                             f"aprilgan:references for few-shot APRIL-GAN); default {','.join(DEFAULT_METHODS)}")
    parser.add_argument("--batches", default="1,4,16,32", help="comma-separated batch sizes (default 1,4,16,32)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--image-size", type=int, default=128,
                        help="input resolution (default 128, the smoke profile's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32, or autocast to bf16 / fp16 (fp16 needs cuda), as evaluate_detector(precision=)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed wall time per point (default 2)")
    parser.add_argument("--min-reps", type=int, default=3, help="at least this many timed calls per point (default 3)")
    parser.add_argument("--no-fit", action="store_true", help="time the untrained detectors (skips fitting)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--official-adaclip", type=Path, help="a checkout of the official AdaCLIP code to compare with")
    parser.add_argument("--official-images", type=int, default=8, help="images the official code is timed on (default 8)")
    parser.add_argument("--official-python", type=Path, default=Path(sys.executable),
                        help="the interpreter that runs the official code (it needs opencv, scikit-learn, ftfy; "
                             "default this one)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    methods = [parse_method(m.strip()) for m in args.methods.split(",") if m.strip()]  # fails early on a bad name
    batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        parser.error("fp16 autocast needs --device cuda; on the CPU use --precision bf16")

    device = device_description(args.device)
    # As evaluate_detector does on the CPU (CLIPAD_REUSE_FREED_MEMORY=0 turns it off, for the official code too).
    device["reuse_freed_memory"] = reuse_freed_memory_for(args.device)
    size = "ViT-B-16 at 240 px (the golden configuration)" if args.official_adaclip else f"{args.image_size} px"
    print(f"torch {device['torch']} | device {args.device}{' (' + device['gpu'] + ')' if 'gpu' in device else ''} | "
          f"CPU {device['cpu']} ({device['cpu_count']} logical) | torch threads {device['torch_threads']} | "
          f"precision {args.precision} | {size} | batches {batches} | {args.seconds:g} s per point | "
          f"freed memory reused {'yes' if device['reuse_freed_memory'] else 'no'} | "
          f"load avg {device['load_average_1min']}", flush=True)
    if args.official_adaclip:
        report = {"device": device, "official_adaclip": compare_with_official_adaclip(args, batches)}
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        return report
    root = ensure_synthetic_dataset()
    train, test = load_dataset("synthetic", "train", root=root), load_dataset("synthetic", "test", root=root)
    report = {"device": device, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "methods": {}}
    width = max(len(label) for _, _, label in methods)
    for name, kind, label in methods:
        start = time.perf_counter()
        detector, fit_seconds = build(name, kind, args.image_size, args.device, not args.no_fit, train, test)
        images = timed_images(detector, test, max(batches))
        points = {}
        for batch in batches:
            points[batch] = time_batch(detector, images[:batch], args.precision, args.seconds, args.min_reps,
                                       args.device)
        best = max(points, key=lambda b: points[b]["images_per_s"])
        base = points.get(1)
        ratio = points[best]["images_per_s"] / base["images_per_s"] if base else None
        report["methods"][label] = {"method": name, "fit_on": kind if not args.no_fit else "nothing",
                                    "batches": points, "best_batch": best, "ratio_best_to_batch1": ratio,
                                    "fit_s": fit_seconds, "total_s": time.perf_counter() - start}
        rates = "  ".join(f"b{b} {p['images_per_s']:7.1f}" for b, p in points.items())
        ratio_text = f"{ratio:.2f}x batch 1" if ratio is not None else "no batch 1"
        print(f"{label:{width}s}  {rates} img/s | best b{best} {points[best]['images_per_s']:.1f} img/s = "
              f"{ratio_text}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
