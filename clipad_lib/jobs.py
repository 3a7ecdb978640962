"""The job ledger: what ran (or is queued) into a results folder, and how it ended.

A *job* is one papermill execution of one notebook: the whole notebook, or one *shard* of it (the
notebook with a list parameter narrowed to a group, see :mod:`clipad_lib.cluster`). Its key is the
notebook stem, ``<stem>@<shard label>`` for a shard. Two files per job, under
``results/<profile>/jobs/``, each written atomically by exactly one party so they never race:

- ``<key>.submitted.json``, by the submitting command, right after ``sbatch`` returns: the
  batch-system job id and the job's fingerprint (local runs write none);
- ``<key>.json``, by the job itself: ``running`` when it starts (host, pid, batch job id),
  then ``done`` or ``failed`` (with the failing cell's message) when it ends.

The state file is the current one when it names the submission's job id or started after the
submission (a job that starts before its submission file is written is still recognised). A job
killed hard (SIGKILL, a node failure) cannot write its end: its state stays ``running``, and
:func:`job_status` finds it dead (the pid is gone on this host, or SLURM no longer lists the job)
and reports it as ``killed``.

The *fingerprint* covers the notebook's source, the parameters injected into it and the library's
code fingerprint, so ``--resume`` re-submits a job whose result is missing, failed or stale.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from .io import atomic_write
from .results.records import code_fingerprint, stable_hash

STATES = ("pending", "running", "done", "failed", "killed", "superseded")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jobs_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "jobs"


def job_fingerprint(notebook: Path, parameters: dict) -> str:
    """What a job's result depends on: the notebook's source, its parameters (without the
    ``resume`` switch and the results folder, which do not change results) and the code."""
    kept = {k: v for k, v in parameters.items() if k not in ("resume", "results_dir")}
    return stable_hash({"notebook": Path(notebook).read_text(), "parameters": kept, "code": code_fingerprint()})


@dataclass
class JobState:
    """What ``<key>.json`` holds: written by the job when it starts and when it ends."""
    key: str
    notebook: str
    state: str                       # running | done | failed
    fingerprint: str
    output: str                      # the executed notebook (final name once the job has ended)
    executor: str = "local"
    batch_job_id: str | None = None  # SLURM_JOB_ID (with the array task, when it ran in an array)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=now)
    ended: str | None = None
    error: str = ""                  # the failing cell and its exception, for a failed job

    def write(self, results_dir: Path) -> Path:
        return atomic_write(jobs_dir(results_dir) / f"{self.key}.json", json.dumps(asdict(self), indent=2))


@dataclass
class Submission:
    """What ``<key>.submitted.json`` holds: written by the submitting command."""
    key: str
    notebook: str
    fingerprint: str
    batch_job_id: str
    log_folder: str
    submitted: str = field(default_factory=now)
    depends_on: list[str] = field(default_factory=list)

    def write(self, results_dir: Path) -> Path:
        return atomic_write(jobs_dir(results_dir) / f"{self.key}.submitted.json", json.dumps(asdict(self), indent=2))


def _read(path: Path, kind):
    try:
        return kind(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path} is not a clipad job file ({exc}); delete it to forget that job") from exc


def read_state(results_dir: Path, key: str) -> JobState | None:
    return _read(jobs_dir(results_dir) / f"{key}.json", JobState)


def read_submission(results_dir: Path, key: str) -> Submission | None:
    return _read(jobs_dir(results_dir) / f"{key}.submitted.json", Submission)


def batch_job_id_from_environment() -> str | None:
    """This process's SLURM job id as ``squeue`` shows it (``<array id>_<task>`` in an array)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}


@dataclass
class SlurmQueue:
    """What ``squeue`` says of some jobs: ``{job id: SLURM state}`` of those it still lists, or
    ``states=None`` with the reason when it cannot be asked (not installed, controller down)."""
    states: dict[str, str] | None
    error: str = ""


def queued_batch_jobs(job_ids: Iterable[str]) -> SlurmQueue:
    """One ``squeue`` call for ``job_ids`` (plain ids and array tasks such as ``12_3``)."""
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return SlurmQueue({})
    try:
        listing = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SlurmQueue(None, f"squeue could not run: {exc}")
    # squeue fails for an id it has already forgotten; it lists the others on stdout anyway.
    if listing.returncode != 0 and "Invalid job id" not in listing.stderr:
        return SlurmQueue(None, f"squeue failed: {listing.stderr.strip() or f'exit {listing.returncode}'}")
    states = {}
    for line in listing.stdout.splitlines():
        job_id, _, state = line.strip().partition(" ")
        states[job_id] = state
    return SlurmQueue(states)


def queue_for(results_dir: Path, keys: Iterable[str]) -> SlurmQueue:
    """``squeue``'s view of every batch job the files of ``keys`` name, in one call."""
    ids = set()
    for key in keys:
        for entry in (read_state(results_dir, key), read_submission(results_dir, key)):
            if entry is not None and entry.batch_job_id:
                ids.add(entry.batch_job_id)
    return queued_batch_jobs(ids)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class JobStatus:
    key: str
    notebook: str
    state: str           # one of STATES
    detail: str          # the failing cell, the SLURM state, why a job counts as killed
    fingerprint: str
    batch_job_id: str | None
    output: str
    log_folder: str = ""


def job_status(results_dir: Path, key: str, queue: SlurmQueue | None = None) -> JobStatus | None:
    """One job's state from its two files (and ``squeue`` for batch jobs); None if never run.
    ``queue`` defaults to asking ``squeue`` about this job's batch ids."""
    state, submission = read_state(results_dir, key), read_submission(results_dir, key)
    if state is None and submission is None:
        return None
    queue = queue if queue is not None else queue_for(results_dir, [key])
    log_folder = submission.log_folder if submission else ""
    # The state file belongs to the latest submission if that job wrote it, or if it was written
    # by a run that started after the submission (that job itself, or a local run).
    current = state is not None and (submission is None or state.batch_job_id == submission.batch_job_id
                                     or state.started >= submission.submitted)
    if not current:  # submitted, not yet started (or never will be)
        assert submission is not None
        if queue.states is None:
            kind, detail = "pending", f"submitted as SLURM job {submission.batch_job_id}; {queue.error}"
        elif submission.batch_job_id not in queue.states:
            kind, detail = "killed", "no longer queued and never started (cancelled, or a dependency failed)"
        else:
            slurm = queue.states[submission.batch_job_id]
            kind, detail = ("running" if slurm in RUNNING_STATES else "pending"), f"SLURM: {slurm}"
        return JobStatus(key, submission.notebook, kind, detail, submission.fingerprint, submission.batch_job_id,
                         "", log_folder)
    if state.state == "running":
        if state.batch_job_id:
            alive = queue.states is None or state.batch_job_id in queue.states
            why = f"SLURM no longer lists job {state.batch_job_id}"
        else:
            alive = state.host != socket.gethostname() or _pid_alive(state.pid)
            why = f"process {state.pid} on {state.host} is gone"
        kind, detail = ("running", f"since {state.started}") if alive else ("killed", why + " (killed or timed out)")
        if queue.states is None and state.batch_job_id:
            detail += f" ({queue.error})"
        return JobStatus(key, state.notebook, kind, detail, state.fingerprint, state.batch_job_id, state.output,
                         log_folder)
    detail = state.error.splitlines()[0] if state.error else f"ended {state.ended}"
    return JobStatus(key, state.notebook, state.state, detail, state.fingerprint, state.batch_job_id, state.output,
                     log_folder)


def job_keys(results_dir: Path) -> list[str]:
    """Every job key with a file in ``results_dir/jobs/``."""
    folder = jobs_dir(results_dir)
    if not folder.is_dir():
        return []
    return sorted({p.name.removesuffix(".json").removesuffix(".submitted") for p in folder.glob("*.json")})


def job_statuses(results_dir: Path) -> list[JobStatus]:
    """The status of every job recorded in ``results_dir`` (one ``squeue`` call for all)."""
    keys = job_keys(results_dir)
    queue = queue_for(results_dir, keys)
    statuses = [status for key in keys if (status := job_status(results_dir, key, queue)) is not None]
    # A failed or killed shard is moot once its whole notebook has since run to the end (its final
    # job, or a local run): the final run computes whatever the shard left missing.
    whole_runs = {s.key: read_state(results_dir, s.key) for s in statuses if "@" not in s.key and s.state == "done"}
    for status in statuses:
        whole = whole_runs.get(status.key.split("@", 1)[0]) if "@" in status.key else None
        shard = read_state(results_dir, status.key)
        if whole and status.state in ("failed", "killed") and (shard is None or whole.started > shard.started):
            status.state, status.detail = "superseded", f"the whole notebook ran to the end after it ({whole.ended})"
    return statuses
