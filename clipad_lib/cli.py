"""The ``clipad`` command: run notebooks headless, check and generate datasets."""
from __future__ import annotations

import argparse
import sys

from .runner import DEFAULT_CELL_TIMEOUT_S


def _run(args) -> int:
    from .runner import parse_parameter, run_notebooks

    overrides = dict(parse_parameter(p) for p in args.parameter)
    results = run_notebooks(args.notebooks, args.profile, overrides, resume=args.resume,
                            cell_timeout=args.cell_timeout or None)
    failed = [r for r in results if not r.ok]
    print(f"[clipad] {len(results) - len(failed)} notebook(s) ran, {len(failed)} failed")
    for result in failed:
        print(f"  {result.notebook.name}: {result.error.splitlines()[0]} (executed copy: {result.output})")
    return 1 if failed else 0


def _verify(args) -> int:
    from .data import SYNTHETIC, dataset_root, verify_dataset

    root = args.root
    if root is None and args.name == SYNTHETIC:
        root = dataset_root(SYNTHETIC)
    report = verify_dataset(args.name, root, deep=args.deep)
    print(report.format())
    return 0 if report.ok else 1


def _list(_args) -> int:
    from .data import list_manifests, load_manifest

    for name in list_manifests():
        manifest = load_manifest(name)
        counts = manifest.test_counts
        shown = f"{counts.normal} normal / {counts.anomalous} anomalous" if counts else "counts not given"
        print(f"{name:<10} {manifest.title:<45} {'+'.join(manifest.label_levels):<12} {shown}")
    return 0


def _generate(args) -> int:
    from .data import ensure_synthetic_dataset

    print(ensure_synthetic_dataset(seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipad", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute notebooks with papermill into results/<profile>/")
    run.add_argument("notebooks", nargs="*", help="notebook names or paths (default: all, in order)")
    run.add_argument("--profile", choices=("smoke", "paper"), default="smoke")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                     help="override a notebook parameter (value read as YAML); repeatable")
    run.add_argument("--resume", action="store_true", help="reuse run records whose inputs and code are unchanged")
    run.add_argument("--cell-timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, metavar="SECONDS",
                     help="fail a notebook whose cell runs longer than this (0: no limit)")
    run.set_defaults(handler=_run)

    data = commands.add_parser("data", help="dataset manifests")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    verify = data_commands.add_parser("verify", help="check a dataset copy against its manifest")
    verify.add_argument("name")
    verify.add_argument("--root", default=None, help="dataset folder (default: $CLIPAD_DATA/<dirname>)")
    verify.add_argument("--deep", action="store_true", help="also decode every image and mask")
    verify.set_defaults(handler=_verify)
    listing = data_commands.add_parser("list", help="list the known datasets")
    listing.set_defaults(handler=_list)
    generate = data_commands.add_parser("generate", help="generate the synthetic dataset into the cache")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(handler=_generate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"clipad: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
