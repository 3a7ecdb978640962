"""Batch regeneration on a SLURM cluster through submitit: shards, submission, resume, waiting.

A notebook runs as one job, or, where its profile section lists *shard axes*, as one job per
shard and then one *final* job. A shard axis names a list (or mapping) parameter that the notebook
loops over independently, such as the methods or the test datasets of a table; a shard runs the
notebook with that parameter narrowed to one group, writing its run records into the shared
results folder and its executed copy into ``results/<profile>/shards/``. The final job runs the
whole notebook with ``resume=True`` once its shards have succeeded: every record is read back, so
it only renders the tables and figures (``results/<profile>/<notebook>.ipynb``).

Axes are data, in the profile's ``shards`` section (see :func:`clipad_lib.profiles.profile_shards`):

    shards:
      11_adaclip_main_tables:
        - {parameter: methods}                                   # one shard per method
        - {parameter: test_datasets, groups: [[mvtec, clinicdb]]}  # these two, then all the others

``groups`` lists groups of elements that must stay together (test sets served by one training);
the elements no group names form one more group. Without ``groups`` each element is a shard.
Several axes multiply. A notebook belongs in the table only if narrowing the parameter gives the
same records as the whole run (the SLURM test checks it for the smoke profile).

Jobs go to SLURM as one job array (``--array-parallelism`` of them at a time) plus the final jobs,
each depending on its shards (``afterok``; cancelled by SLURM when a shard fails). The job ledger
(:mod:`clipad_lib.jobs`) records each job's state; ``--resume`` re-submits only jobs that are
missing, failed, killed or stale, and reuses every unchanged run record inside the notebooks.
"""
from __future__ import annotations

import itertools
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import paths
from .jobs import (JobStatus, Submission, batch_job_id_from_environment, job_fingerprint, job_status, queue_for,
                   read_state)
from .profiles import profile_shards
from .runner import DEFAULT_CELL_TIMEOUT_S, NotebookResult, execute_notebook, plan_parameters, resolve_notebooks

TERMINAL = ("done", "failed", "killed")


class JobsInFlight(RuntimeError):
    """Raised instead of submitting a second run into a results folder whose jobs still run."""


@dataclass(frozen=True)
class NotebookJob:
    """One papermill execution: a whole notebook, a shard of one, or a sharded notebook's final run."""

    key: str                               # "<stem>" or "<stem>@<shard label>"
    notebook: Path
    parameters: dict
    results_dir: Path
    shard: Mapping[str, Any] = field(default_factory=dict)  # the narrowed parameters; empty: not a shard
    after: tuple[str, ...] = ()            # keys of the shards a final job waits for

    @property
    def output_dir(self) -> Path:
        return self.results_dir / "shards" if self.shard else self.results_dir

    @cached_property  # reads the notebook and hashes it; asked several times while planning
    def fingerprint(self) -> str:
        return job_fingerprint(self.notebook, self.parameters)


def _elements(value: Any, parameter: str, notebook: str) -> list:
    if isinstance(value, Mapping):
        return list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{notebook}: shard parameter {parameter!r} must be a list or a mapping, got {value!r}")


def _narrow(value: Any, chosen: Sequence) -> Any:
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k in chosen}
    return [v for v in value if v in chosen]


def shard_groups(value: Any, groups: Sequence[Sequence] | None, parameter: str = "", notebook: str = "") -> list[list]:
    """Split a list/mapping parameter's elements into shard groups (the value's order kept).

    >>> shard_groups(["a", "b", "c", "d"], [["b", "d"]])
    [['b', 'd'], ['a', 'c']]
    >>> shard_groups({"x": 1, "y": 2}, None)
    [['x'], ['y']]
    """
    elements = _elements(value, parameter, notebook)
    if groups is None:
        return [[e] for e in elements]
    named = [[e for e in elements if e in group] for group in groups]
    grouped = {e for group in groups for e in group}
    rest = [e for e in elements if e not in grouped]
    return [g for g in (*named, rest) if g]


def _label(group: Sequence) -> str:
    """``a``, ``a+b+c``, or ``a+5-more`` for a long group (groups are disjoint, so it stays unique)."""
    return "+".join(map(str, group)) if len(group) <= 3 else f"{group[0]}+{len(group) - 1}-more"


def plan_jobs(names: Sequence[str], profile: str, overrides: Mapping | None = None, *, resume: bool = False,
              results_dir: Path | None = None, shard: bool = True) -> list[NotebookJob]:
    """The jobs that regenerate ``names`` (all notebooks when empty): every notebook's parameters
    checked before anything is submitted, then split by the profile's shard axes."""
    results_dir = Path(results_dir) if results_dir else paths.results_dir(profile)
    axes_of = profile_shards(profile) if shard else {}
    jobs = []
    notebooks = resolve_notebooks(names)
    for notebook, parameters in zip(notebooks, plan_parameters(notebooks, profile, dict(overrides or {}), resume,
                                                               results_dir)):
        axes = axes_of.get(notebook.stem, [])
        for axis in axes:
            if axis["parameter"] not in parameters:
                raise ValueError(f"profiles/{profile}.yaml shards {notebook.stem!r}: the notebook has no "
                                 f"parameter {axis['parameter']!r}")
        splits = [[(axis["parameter"], group) for group in
                   shard_groups(parameters[axis["parameter"]], axis.get("groups"), axis["parameter"], notebook.stem)]
                  for axis in axes]
        combinations = list(itertools.product(*splits)) if splits else []
        if len(combinations) <= 1:
            jobs.append(NotebookJob(notebook.stem, notebook, parameters, results_dir))
            continue
        shard_keys = []
        for combination in combinations:
            narrowed = {parameter: _narrow(parameters[parameter], group) for parameter, group in combination}
            key = f"{notebook.stem}@" + "@".join(_label(group) for (_, group), split in zip(combination, splits)
                                                 if len(split) > 1)  # an axis with one group names nothing
            shard_keys.append(key)
            jobs.append(NotebookJob(key, notebook, {**parameters, **narrowed}, results_dir, shard=narrowed))
        jobs.append(NotebookJob(notebook.stem, notebook, {**parameters, "resume": True}, results_dir,
                                after=tuple(shard_keys)))
    return jobs


def run_job(job: NotebookJob, executor: str = "slurm", cell_timeout: int | None = DEFAULT_CELL_TIMEOUT_S
            ) -> NotebookResult:
    """What a batch job runs on its node: execute the notebook, record its state; raise when it
    failed, so that SLURM marks the job failed and cancels the jobs waiting on it."""
    signals: list[int] = []
    # SLURM stops a job with SIGTERM (scancel, the time limit, preemption) before SIGKILL; the kernel
    # dies of it and papermill reports a dead kernel, so remember why for the job's state.
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers may be set
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signals.append(signum)) if in_main_thread else None
    try:
        result = execute_notebook(job.notebook, job.parameters, job.results_dir, key=job.key,
                                  output_dir=job.output_dir, progress=False, cell_timeout=cell_timeout,
                                  executor=executor, batch_job_id=batch_job_id_from_environment())
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if not result.ok:
        state = read_state(job.results_dir, job.key)
        if signals and state is not None:
            state.error = f"stopped by SLURM (SIGTERM: scancel, the time limit or preemption); {state.error}"
            state.write(job.results_dir)
            result.error = state.error
        raise RuntimeError(f"{job.key} failed: {result.error}")
    return result


@dataclass(frozen=True)
class SlurmOptions:
    """sbatch settings of every job (submitit's SlurmExecutor parameters)."""

    partition: str | None = None
    gpus: int = 0                   # GPUs per job (0: none requested)
    time_minutes: int = 24 * 60
    mem_gb: int | None = None       # None: the partition's default
    cpus: int | None = None         # CPUs per job
    array_parallelism: int = 16     # array jobs running at once
    cell_timeout: int | None = DEFAULT_CELL_TIMEOUT_S

    def executor_parameters(self) -> dict:
        parameters = {"time": self.time_minutes, "array_parallelism": self.array_parallelism, "job_name": "clipad"}
        if self.partition:
            parameters["partition"] = self.partition
        if self.gpus:
            parameters["gpus_per_node"] = self.gpus
        if self.mem_gb:
            parameters["mem"] = f"{self.mem_gb}GB"
        if self.cpus:
            parameters["cpus_per_task"] = self.cpus
        return parameters


@dataclass
class SubmissionPlan:
    submit: list[NotebookJob]
    up_to_date: list[str]                  # keys whose result is done with the same fingerprint
    in_flight: list[JobStatus]             # queued or running now (not submitted again)
    cancel: list[JobStatus] = field(default_factory=list)  # final jobs in flight that must wait for a new shard
    stale_in_flight: list[str] = field(default_factory=list)  # in flight, but for other inputs than this plan's


def submission_plan(jobs: Sequence[NotebookJob], resume: bool) -> SubmissionPlan:
    """Which jobs to submit. Without ``resume``, all of them; with it, only those whose result is
    missing, failed, killed or stale. A job queued or running now is not submitted twice. A final
    job is submitted whenever one of its shards is; if that final job is itself still queued, it
    is cancelled and submitted again behind the new shard."""
    if not jobs:
        return SubmissionPlan([], [], [])
    queue = queue_for(jobs[0].results_dir, [job.key for job in jobs])
    statuses = {job.key: job_status(job.results_dir, job.key, queue) for job in jobs}
    in_flight = {key: s for key, s in statuses.items() if s is not None and s.state in ("pending", "running")}
    plan = SubmissionPlan([], [], [])
    chosen = set()
    for job in jobs:
        status = statuses[job.key]
        needed_by_a_new_shard = bool(job.after) and bool(chosen & set(job.after))
        if job.key in in_flight:
            if needed_by_a_new_shard:
                plan.cancel.append(in_flight[job.key])
            else:
                plan.in_flight.append(in_flight[job.key])
                if in_flight[job.key].fingerprint != job.fingerprint:
                    plan.stale_in_flight.append(job.key)
                continue
        elif not needed_by_a_new_shard and resume and status is not None and status.state == "done" \
                and status.fingerprint == job.fingerprint:
            plan.up_to_date.append(job.key)
            continue
        plan.submit.append(job)
        chosen.add(job.key)
    return plan


class SubmissionFailed(RuntimeError):
    """sbatch refused a job; what was submitted before it is recorded and listed in the message."""


def submit_to_slurm(jobs: Sequence[NotebookJob], options: SlurmOptions, *, resume: bool = False,
                    log_folder: Path | None = None) -> tuple[SubmissionPlan, list[Submission]]:
    """Submit ``jobs`` (see :func:`submission_plan`) with submitit; returns the plan and what was
    submitted. Refuses, before submitting anything, when a job of this plan is still in flight and
    ``resume`` is off (two runs would interleave in one results folder). Each submission is
    recorded as soon as sbatch returns its id."""
    import submitit
    from submitit.core.utils import FailedJobError

    plan = submission_plan(jobs, resume)
    if plan.in_flight and not resume:
        listing = ", ".join(f"{s.key} ({s.state}, SLURM job {s.batch_job_id})" for s in plan.in_flight)
        raise JobsInFlight(f"jobs of this run are still queued or running: {listing}; wait for them "
                           f"(clipad status), cancel them (scancel <id>), or add --resume to submit only the rest")
    if not plan.submit:
        return plan, []
    results_dir = plan.submit[0].results_dir
    log_folder = Path(log_folder or results_dir / "jobs" / "slurm")
    for status in plan.cancel:  # a queued final job that must also wait for a re-submitted shard
        subprocess.run(["scancel", str(status.batch_job_id)], capture_output=True, text=True)
    executor = submitit.SlurmExecutor(folder=log_folder / "%j")
    executor.update_parameters(**options.executor_parameters())
    first_wave = [job for job in plan.submit if not job.after]
    finals = [job for job in plan.submit if job.after]
    in_flight_ids = {s.key: s.batch_job_id for s in plan.in_flight if s.batch_job_id}
    records: list[Submission] = []

    def record(job: NotebookJob, job_id: str, depends_on: list[str]) -> None:
        submission = Submission(job.key, job.notebook.stem, job.fingerprint, job_id, str(log_folder),
                                depends_on=depends_on)
        submission.write(results_dir)
        records.append(submission)

    try:
        if first_wave:
            with executor.batch():
                handles = [executor.submit(run_job, job, "slurm", options.cell_timeout) for job in first_wave]
            for job, handle in zip(first_wave, handles):
                record(job, handle.job_id, [])
        submitted = {r.key: r.batch_job_id for r in records}
        for job in finals:
            # Wait for the shards submitted now and for those still queued or running.
            waits_for = [submitted.get(key) or in_flight_ids[key] for key in job.after
                         if key in submitted or key in in_flight_ids]
            executor.update_parameters(dependency=f"afterok:{':'.join(waits_for)}" if waits_for else None,
                                       additional_parameters={"kill_on_invalid_dep": "yes"} if waits_for else {})
            record(job, executor.submit(run_job, job, "slurm", options.cell_timeout).job_id, waits_for)
    except (FailedJobError, OSError) as exc:
        done = ", ".join(f"{r.key} ({r.batch_job_id})" for r in records) or "nothing"
        raise SubmissionFailed(f"sbatch failed: {str(exc).strip()}. Submitted before the failure: {done}; "
                               "fix the cause and re-run with --resume to submit the rest") from None
    return plan, records


def wait_for_jobs(results_dir: Path, keys: Sequence[str], *, poll_seconds: float = 10.0,
                  timeout_seconds: float | None = None, on_change=None) -> list[JobStatus]:
    """Poll the ledger (and squeue) until every job of ``keys`` has ended; returns their statuses."""
    start, last = time.monotonic(), None
    while True:
        queue = queue_for(results_dir, keys)
        statuses = [job_status(results_dir, key, queue) for key in keys]
        summary = [(s.key, s.state) if s else (key, "unknown") for key, s in zip(keys, statuses)]
        if on_change is not None and summary != last:
            on_change(statuses)
        last = summary
        if all(s is not None and s.state in TERMINAL for s in statuses):
            return statuses
        if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
            raise TimeoutError(f"jobs still running after {timeout_seconds:.0f} s: "
                               + ", ".join(k for k, state in summary if state not in TERMINAL))
        time.sleep(poll_seconds)
