"""The ``clipad`` command: run notebooks headless (here or as SLURM jobs), follow them (``status``),
check what they need before running (``check``), and list, verify and generate datasets (``data``)."""
from __future__ import annotations

import argparse
import os
import sys

from .profiles import available_profiles
from .runner import DEFAULT_CELL_TIMEOUT_S

PROFILES = tuple(available_profiles())


def _run(args) -> int:
    from .runner import ResultsFolderBusy, parse_parameter, run_notebooks

    overrides = dict(parse_parameter(p) for p in args.parameter)
    if args.executor == "slurm":
        return _run_on_slurm(args, overrides)
    ignored = [flag for flag, value in (("--slurm-partition", args.slurm_partition), ("--gpus", args.gpus),
                                        ("--mem", args.mem), ("--cpus", args.cpus), ("--wait", args.wait)) if value]
    if ignored:
        print(f"[clipad] {', '.join(ignored)} only apply with --executor slurm; running here, one notebook after "
              "the other", flush=True)
    try:
        results = run_notebooks(args.notebooks, args.profile, overrides, resume=args.resume,
                                cell_timeout=args.cell_timeout or None)
    except ResultsFolderBusy as exc:
        print(f"clipad: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if not r.ok]
    print(f"[clipad] {len(results) - len(failed)} notebook(s) ran, {len(failed)} failed")
    for result in failed:
        copy = f"executed copy: {result.output}" if result.output.exists() else "no executed copy"
        lines = result.error.splitlines() or ["(no message)"]
        shown = lines[:40] + ([f"... {len(lines) - 40} more lines in the {copy}"] if len(lines) > 40 else [])
        print(f"  {result.notebook.name} ({copy}):")
        print("\n".join(f"    {line}" for line in shown))  # the whole message: it may be a list of problems
    return 1 if failed else 0


def _run_on_slurm(args, overrides: dict) -> int:
    from . import paths
    from .cluster import JobsInFlight, SlurmOptions, SubmissionFailed, plan_jobs, submit_to_slurm, wait_for_jobs

    results_dir = paths.results_dir(args.profile)
    jobs = plan_jobs(args.notebooks, args.profile, overrides, resume=args.resume, results_dir=results_dir)
    gpus = args.gpus if args.gpus is not None else (1 if args.profile == "paper" else 0)
    options = SlurmOptions(partition=args.slurm_partition, gpus=gpus, time_minutes=args.time, mem_gb=args.mem,
                           cpus=args.cpus, array_parallelism=args.array_parallelism,
                           cell_timeout=args.cell_timeout or None)
    try:
        plan, submitted = submit_to_slurm(jobs, options, resume=args.resume)
    except (JobsInFlight, SubmissionFailed) as exc:
        print(f"clipad: error: {exc}", file=sys.stderr)
        return 2
    for key in plan.up_to_date:
        print(f"[clipad] up to date, not submitted: {key}")
    for status in plan.in_flight:
        stale = " (it runs other inputs than this command's: cancel it and re-run to replace it)" \
            if status.key in plan.stale_in_flight else ""
        print(f"[clipad] still {status.state}, not submitted again: {status.key} (SLURM job {status.batch_job_id}){stale}")
    for status in plan.cancel:
        print(f"[clipad] cancelled queued {status.key} (SLURM job {status.batch_job_id}): it waits for a new shard")
    for record in submitted:
        after = f" after {', '.join(record.depends_on)}" if record.depends_on else ""
        print(f"[clipad] submitted {record.key} as SLURM job {record.batch_job_id}{after}")
    print(f"[clipad] {len(submitted)} job(s) submitted to SLURM; logs in {submitted[0].log_folder if submitted else '-'}; "
          f"follow them with: clipad status --profile {args.profile}")
    if not args.wait:
        return 0
    keys = [record.key for record in submitted] + [status.key for status in plan.in_flight]
    statuses = wait_for_jobs(results_dir, keys, poll_seconds=args.poll,
                             on_change=lambda found: print("[clipad] " + ", ".join(
                                 f"{s.key}: {s.state}" for s in found if s is not None), flush=True))
    print(_format_statuses(statuses))
    return 0 if all(s.state == "done" for s in statuses) else 1


def _format_statuses(statuses) -> str:
    if not statuses:
        return "no jobs recorded"
    width = max(len(s.key) for s in statuses)
    ids = max(12, *(len(s.batch_job_id or "") for s in statuses))
    lines = [f"{'state':<8} {'job':<{width}} {'SLURM job':<{ids}} detail"]
    for s in statuses:
        lines.append(f"{s.state:<8} {s.key:<{width}} {s.batch_job_id or '-':<{ids}} {s.detail}")
        if s.state in ("failed", "killed") and (s.output or s.log_folder):
            where = s.output or s.log_folder
            lines.append(f"{'':<8} {'':<{width}} {'':<{ids}} see {where}")
    return "\n".join(lines)


def _status(args) -> int:
    import json
    from collections import Counter

    from . import paths
    from .jobs import job_statuses

    results_dir = paths.results_dir(args.profile)
    statuses = job_statuses(results_dir)
    record_files = sorted((results_dir / "records").rglob("*.json")) if (results_dir / "records").is_dir() else []
    runs = Counter(path.relative_to(results_dir / "records").parts[0] for path in record_files)
    if args.json:
        print(json.dumps({"results_dir": str(results_dir), "jobs": [s.__dict__ for s in statuses],
                          "records": dict(sorted(runs.items()))}, indent=2))
    else:
        print(f"jobs in {results_dir / 'jobs'}:")
        print(_format_statuses(statuses))
        print(f"\n{len(record_files)} run record(s) in {results_dir / 'records'}"
              + (f", {len(runs)} run(s):" if runs else ""))
        for run, count in sorted(runs.items()):
            print(f"  {run:<50} {count}")
    return 1 if any(s.state in ("failed", "killed") for s in statuses) else 0


def _check(args) -> int:
    from .preflight import check_notebooks
    from .runner import parse_parameter

    overrides = dict(parse_parameter(p) for p in args.parameter)
    report = check_notebooks(args.notebooks, args.profile, overrides, deep=args.deep, device=not args.skip_device)
    print(report.to_json() if args.json else report.format())
    return 0 if report.ok else 1


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


def _notebook_arguments(command: argparse.ArgumentParser, default_profile: str) -> None:
    """What `run` and `check` both take: the notebooks, the profile, and the -p overrides."""
    command.add_argument("notebooks", nargs="*", help="notebook names, numbers or paths (default: all, in order)")
    command.add_argument("--profile", choices=PROFILES, default=default_profile)
    command.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                         help="override a notebook parameter (value read as YAML); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipad", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute notebooks with papermill into results/<profile>/")
    _notebook_arguments(run, default_profile="smoke")
    run.add_argument("--resume", action="store_true", help="reuse run records whose inputs and code are unchanged")
    run.add_argument("--cell-timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, metavar="SECONDS",
                     help="fail a notebook whose cell runs longer than this (0: no limit)")
    run.add_argument("--executor", choices=("local", "slurm"), default="local",
                     help="local: one notebook after the other here (default); slurm: one job per notebook "
                          "or shard, submitted with submitit")
    slurm = run.add_argument_group("SLURM (--executor slurm)")
    slurm.add_argument("--slurm-partition", default=None, help="partition (default: the cluster's default)")
    slurm.add_argument("--gpus", type=int, default=None, help="GPUs per job (default: 1 for paper, 0 for smoke)")
    slurm.add_argument("--time", type=int, default=24 * 60, metavar="MINUTES", help="time limit per job")
    slurm.add_argument("--mem", type=int, default=None, metavar="GB", help="memory per job")
    slurm.add_argument("--cpus", type=int, default=None, help="CPUs per job")
    slurm.add_argument("--array-parallelism", type=int, default=16, help="array jobs running at once")
    slurm.add_argument("--wait", action="store_true", help="wait for the jobs to end and print their states")
    slurm.add_argument("--poll", type=float, default=30.0, metavar="SECONDS", help="how often --wait looks")
    run.set_defaults(handler=_run)

    check = commands.add_parser("check", help="preflight: does each notebook find its datasets, weights, GPU, disk?")
    _notebook_arguments(check, default_profile="paper")
    check.add_argument("--deep", action="store_true", help="also decode every image and mask of every dataset")
    check.add_argument("--skip-device", action="store_true",
                       help="do not check CUDA and GPU memory (on a login node without GPU)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=_check)

    status = commands.add_parser("status", help="the jobs and run records of a profile's results folder")
    status.add_argument("--profile", choices=PROFILES, default="smoke")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

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
    except BrokenPipeError:  # `clipad data list | head`: the reader has gone, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
