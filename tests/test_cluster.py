"""Batch regeneration: shard planning, the job ledger, and a real single-node SLURM cluster.

The SLURM test starts munged, slurmctld and slurmd on localhost (``scripts/local_slurm.py``) when
Debian's ``slurm-wlm`` and ``munge`` are installed; it is skipped otherwise, unless
``CLIPAD_REQUIRE_SLURM=1`` (set by ``.ci/run``) makes their absence a failure.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_notebook

import nbformat
from clipad_lib.cluster import plan_jobs, shard_groups, submission_plan
from clipad_lib.jobs import JobState, SlurmQueue, Submission, job_status, job_statuses
from clipad_lib.profiles import profile_parameters
from clipad_lib.results import load_records
from clipad_lib.runner import execute_notebook, run_notebooks

REPO = Path(__file__).resolve().parents[1]


def _local_slurm_module():
    spec = importlib.util.spec_from_file_location("local_slurm", REPO / "scripts" / "local_slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(path: Path, *cells: str) -> Path:
    notebook = new_notebook(cells=[new_code_cell(cells[0], metadata={"tags": ["parameters"]}),
                                   *(new_code_cell(c) for c in cells[1:])])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_shard_groups_keep_named_groups_together_and_the_rest_as_one():
    assert shard_groups(["mvtec", "visa", "clinicdb", "btad"], [["mvtec", "clinicdb"]]) == [
        ["mvtec", "clinicdb"], ["visa", "btad"]]
    assert shard_groups(["visa", "btad"], [["mvtec", "clinicdb"]]) == [["visa", "btad"]]
    assert shard_groups({"winclip": {}, "adaclip": {"epochs": 1}}, None) == [["winclip"], ["adaclip"]]
    with pytest.raises(ValueError, match="must be a list or a mapping"):
        shard_groups("mvtec", None, "test_datasets", "11")


def test_plan_splits_notebook_11_by_method_and_training_and_adds_a_final_job(tmp_path):
    _, section = profile_parameters("smoke", "11_adaclip_main_tables")
    methods = {name: section["methods"][name] for name in ("winclip", "dinov2")}
    jobs = plan_jobs(["11_adaclip_main_tables", "00_data_and_metrics"], "smoke",
                     {"methods": methods, "test_datasets": ["mvtec", "headct", "clinicdb", "isic"]},
                     results_dir=tmp_path)
    keys = [job.key for job in jobs]
    assert keys == ["11_adaclip_main_tables@winclip@mvtec+clinicdb", "11_adaclip_main_tables@winclip@headct+isic",
                    "11_adaclip_main_tables@dinov2@mvtec+clinicdb", "11_adaclip_main_tables@dinov2@headct+isic",
                    "11_adaclip_main_tables", "00_data_and_metrics"]
    shard = jobs[1]
    assert shard.parameters["test_datasets"] == ["headct", "isic"] and list(shard.parameters["methods"]) == ["winclip"]
    assert shard.output_dir == tmp_path / "shards" and shard.parameters["resume"] is False
    final = jobs[4]
    assert final.after == tuple(keys[:4]) and final.parameters["resume"] is True
    assert final.parameters["test_datasets"] == ["mvtec", "headct", "clinicdb", "isic"]
    assert not jobs[5].shard and not jobs[5].after  # a notebook without axes is one job
    # One group only: no shards.
    single = plan_jobs(["11_adaclip_main_tables"], "smoke", {"methods": {"winclip": methods["winclip"]},
                                                             "test_datasets": ["headct"]}, results_dir=tmp_path)
    assert [job.key for job in single] == ["11_adaclip_main_tables"]


def test_overrides_are_checked_for_every_notebook_before_anything_runs(tmp_path, capsys):
    # A key that only one notebook declares goes to that one; a key none declares is refused.
    jobs = plan_jobs(["00_data_and_metrics", "11_adaclip_main_tables"], "smoke", {"shots": 2, "seeds": [0]},
                     results_dir=tmp_path)
    assert jobs[0].parameters["shots"] == 2 and "shots" not in jobs[-1].parameters
    assert "-p shots applies to 00_data_and_metrics only" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"no selected notebook has the parameter\(s\) \['shotz'\]"):
        plan_jobs(["00_data_and_metrics", "11_adaclip_main_tables"], "smoke", {"shotz": 2}, results_dir=tmp_path)
    # A value of the wrong type is refused up front, naming what was expected.
    with pytest.raises(ValueError, match=r"'seeds' \(-p override\) expects list like the notebook's default "
                                         r"\[0, 1, 2\] and the profile's value \[0, 1, 2\]; got str 'notalist'"):
        run_notebooks(["00_data_and_metrics"], "smoke", {"seeds": "notalist"}, results_root=tmp_path)
    with pytest.raises(ValueError, match=r"expects a list of int like \[0, 1, 2\]; got 0.5 \(float\)"):
        plan_jobs(["00_data_and_metrics"], "smoke", {"seeds": [0.5]}, results_dir=tmp_path)
    # A float written as YAML 1.1 would read it as a string is a float; the notebook number selects it.
    from clipad_lib.runner import parse_parameter
    assert parse_parameter("learning_rates=[5e-4, 1e-4]") == ("learning_rates", [0.0005, 0.0001])
    assert [job.key for job in plan_jobs(["20", "20_clip_fsac_few_shot"], "smoke", {"learning_rates": [5e-4, 1e-4]},
                                         results_dir=tmp_path)] == ["20_clip_fsac_few_shot"]
    assert not (tmp_path / "00_data_and_metrics.ipynb").exists() and not (tmp_path / "jobs").exists()
    # None (a method's default, "none") and an int for a float are fine.
    plan_jobs(["00_data_and_metrics"], "smoke", {"pretrained": None, "categories": ["pill"]}, results_dir=tmp_path)


def test_a_failed_run_keeps_the_last_good_copy_and_records_why(tmp_path):
    notebook = _notebook(tmp_path / "nb.ipynb", "x = 1", "assert x == 1, 'x must be 1'")
    results = tmp_path / "out"
    good = execute_notebook(notebook, {"x": 1}, results, progress=False)
    assert good.ok and good.output == results / "nb.ipynb"
    bad = execute_notebook(notebook, {"x": 2}, results, progress=False)
    assert not bad.ok and "AssertionError: x must be 1" in bad.error
    assert bad.output == results / "nb.failed.ipynb" and bad.output.is_file()
    kept = nbformat.read(results / "nb.ipynb", as_version=4)
    assert "x = 1" in kept.cells[1].source  # papermill's injected parameters of the good run
    [status] = job_statuses(results)
    assert status.state == "failed" and "cell 2" in status.detail and "AssertionError" in status.detail
    again = execute_notebook(notebook, {"x": 1}, results, progress=False)
    assert again.ok and not (results / "nb.failed.ipynb").exists()
    assert job_status(results, "nb").state == "done"
    # A shard that failed before the whole notebook ran to the end no longer counts as a failure.
    JobState(key="nb@a", notebook="nb", state="failed", fingerprint="f", output="", error="cell 3 raised",
             started="2000-01-01T00:00:00+00:00").write(results)
    assert {s.key: s.state for s in job_statuses(results)} == {"nb": "done", "nb@a": "superseded"}


def test_a_job_killed_hard_is_reported_killed_not_running(tmp_path):
    notebook = _notebook(tmp_path / "nb.ipynb", "x = 1")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    JobState(key="nb", notebook="nb", state="running", fingerprint="f", output="nb.running.ipynb",
             pid=dead.pid).write(tmp_path)
    status = job_status(tmp_path, "nb")
    assert status.state == "killed" and f"process {dead.pid}" in status.detail
    JobState(key="nb", notebook="nb", state="running", fingerprint="f", output="nb.running.ipynb").write(tmp_path)
    assert job_status(tmp_path, "nb").state == "running"  # this very process is alive
    # A submitted batch job that SLURM no longer lists and that never started was cancelled.
    Submission(key="nb", notebook="nb", fingerprint="f", batch_job_id="77", log_folder="logs",
               submitted="9999-01-01T00:00:00+00:00").write(tmp_path)
    status = job_status(tmp_path, "nb", SlurmQueue({}))
    assert status.state == "killed" and "never started" in status.detail
    assert job_status(tmp_path, "nb", SlurmQueue({"77": "PENDING"})).state == "pending"
    assert job_status(tmp_path, "nb", SlurmQueue({"77": "SUSPENDED"})).state == "pending"
    assert job_status(tmp_path, "nb", SlurmQueue({"77": "RUNNING"})).state == "running"
    unknown = job_status(tmp_path, "nb", SlurmQueue(None, "squeue failed: controller down"))
    assert unknown.state == "pending" and "controller down" in unknown.detail
    # The job started before its submission file named it: its own state file is still current.
    JobState(key="nb", notebook="nb", state="running", fingerprint="f", output="x", batch_job_id="78",
             started="9999-01-01T00:00:01+00:00").write(tmp_path)
    assert job_status(tmp_path, "nb", SlurmQueue({"78": "RUNNING"})).state == "running"
    del notebook


def test_resume_submits_only_missing_failed_or_stale_jobs_and_their_final(tmp_path):
    _, section = profile_parameters("smoke", "11_adaclip_main_tables")
    overrides = {"methods": {name: section["methods"][name] for name in ("winclip", "dinov2")},
                 "test_datasets": ["headct"]}
    jobs = plan_jobs(["11_adaclip_main_tables"], "smoke", overrides, results_dir=tmp_path)
    winclip, dinov2, final = jobs
    JobState(key=winclip.key, notebook=winclip.notebook.stem, state="done", fingerprint=winclip.fingerprint,
             output="x").write(tmp_path)
    JobState(key=final.key, notebook=final.notebook.stem, state="done", fingerprint=final.fingerprint,
             output="x").write(tmp_path)
    JobState(key=dinov2.key, notebook=dinov2.notebook.stem, state="failed", fingerprint=dinov2.fingerprint,
             output="x", error="cell 6 raised").write(tmp_path)
    plan = submission_plan(jobs, resume=True)
    assert [job.key for job in plan.submit] == [dinov2.key, final.key] and plan.up_to_date == [winclip.key]
    # A changed notebook parameter makes a done job stale.
    changed = plan_jobs(["11_adaclip_main_tables"], "smoke", {**overrides, "batch_size": 4}, results_dir=tmp_path)
    assert [job.key for job in submission_plan(changed, resume=True).submit] == [job.key for job in changed]
    assert len(submission_plan(jobs, resume=False).submit) == 3


def test_a_final_job_waits_for_shards_in_flight_and_a_queued_final_is_replaced(tmp_path, monkeypatch):
    import clipad_lib.cluster as cluster

    _, section = profile_parameters("smoke", "11_adaclip_main_tables")
    overrides = {"methods": {name: section["methods"][name] for name in ("winclip", "dinov2")},
                 "test_datasets": ["headct"]}
    winclip, dinov2, final = plan_jobs(["11_adaclip_main_tables"], "smoke", overrides, results_dir=tmp_path)
    JobState(key=winclip.key, notebook="11", state="failed", fingerprint=winclip.fingerprint, output="x",
             error="cell 6").write(tmp_path)
    for job, job_id in ((dinov2, "41"), (final, "42")):
        Submission(key=job.key, notebook="11", fingerprint=job.fingerprint, batch_job_id=job_id,
                   log_folder="logs").write(tmp_path)
    monkeypatch.setattr(cluster, "queue_for", lambda results_dir, keys: SlurmQueue({"41": "RUNNING", "42": "PENDING"}))
    plan = submission_plan([winclip, dinov2, final], resume=True)
    assert [job.key for job in plan.submit] == [winclip.key, final.key]
    assert [s.key for s in plan.in_flight] == [dinov2.key] and [s.key for s in plan.cancel] == [final.key]
    # Submitted through a stand-in for submitit: the final job waits for the new shard and the running one.
    calls, cancelled = [], []

    class Handle:
        def __init__(self, job_id):
            self.job_id = job_id

    class Executor:
        def __init__(self, folder):
            self.parameters = {}

        def update_parameters(self, **parameters):
            self.parameters.update(parameters)

        def batch(self):
            import contextlib
            return contextlib.nullcontext()

        def submit(self, function, job, *args):
            calls.append((job.key, self.parameters.get("dependency")))
            return Handle(str(50 + len(calls)))

    import submitit
    monkeypatch.setattr(submitit, "SlurmExecutor", Executor)
    monkeypatch.setattr(cluster.subprocess, "run", lambda command, **kw: cancelled.append(command))
    _, records = cluster.submit_to_slurm([winclip, dinov2, final], cluster.SlurmOptions(), resume=True)
    assert cancelled == [["scancel", "42"]]
    assert calls == [(winclip.key, None), (final.key, "afterok:51:41")]
    assert [(r.key, r.batch_job_id) for r in records] == [(winclip.key, "51"), (final.key, "52")]
    assert job_status(tmp_path, final.key, SlurmQueue({"52": "PENDING"})).state == "pending"


# ---------------------------------------------------------------------------------------------------
# A real SLURM cluster on localhost.

@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    local_slurm = _local_slurm_module()
    missing = local_slurm.missing_binaries()
    reason = ""
    if missing:
        reason = f"SLURM is not installed here (missing {', '.join(missing)}; apt-get install slurm-wlm munge)"
    elif os.geteuid() != 0:
        reason = "a local slurmd needs root"
    if reason:
        if os.environ.get("CLIPAD_REQUIRE_SLURM") == "1":
            pytest.fail(f"CLIPAD_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    cluster = local_slurm.LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def _clipad(arguments: list[str], environment: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipad_lib.cli", *arguments], capture_output=True, text=True,
                          env={**os.environ, **environment}, timeout=600)


def _wait(predicate, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _comparable(records) -> dict:
    return {(r.run_name, r.dataset, r.category, r.seed): (r.input_hash, r.metrics) for r in records}


def test_two_notebooks_on_slurm_killed_and_resumed_equal_a_local_run(tmp_path, synthetic_root, local_slurm,
                                                                      monkeypatch):
    _, section = profile_parameters("smoke", "11_adaclip_main_tables")
    methods = {"winclip": section["methods"]["winclip"], "dinov2": {**section["methods"]["dinov2"], "epochs": 2}}
    overrides = {"seeds": [0], "categories": ["pill", "weave"], "test_datasets": ["mvtec", "headct"],
                 "methods": methods}
    notebooks = ["00_data_and_metrics", "11_adaclip_main_tables"]
    arguments = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]  # JSON is YAML
    parameters = [item for argument in arguments for item in ("-p", argument)]

    local = run_notebooks(notebooks, "smoke", overrides, results_root=tmp_path / "local" / "smoke", progress=False)
    assert all(r.ok for r in local), [r.error for r in local]

    environment = {**local_slurm.environment, "CLIPAD_RESULTS": str(tmp_path / "cluster")}
    for name, value in local_slurm.environment.items():  # this process asks squeue too
        monkeypatch.setenv(name, value)
    results = tmp_path / "cluster" / "smoke"
    submitted = _clipad(["run", *notebooks, "--executor", "slurm", *parameters], environment)
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    assert "submitted 11_adaclip_main_tables as SLURM job" in submitted.stdout and "after" in submitted.stdout
    victim = "11_adaclip_main_tables@dinov2@headct"  # trained on MVTec AD + ClinicDB stand-ins
    # Kill the DINOv2 shard while it runs (mid-way: it has started, it has not finished).
    started = _wait(lambda: (s := job_status(results, victim)) and s.state == "running" and s.batch_job_id and s,
                    f"{victim} to start")
    time.sleep(3)
    assert job_status(results, victim).state == "running"
    subprocess.run(["scancel", started.batch_job_id], check=True, env={**os.environ, **environment})
    statuses = _wait(lambda: (found := job_statuses(results)) and len(found) == 6
                     and all(s.state in ("done", "failed", "killed") for s in found) and found,
                     "every job to end")
    states = {s.key: s.state for s in statuses}
    assert states == {"00_data_and_metrics": "done", "11_adaclip_main_tables@winclip@mvtec": "done",
                      "11_adaclip_main_tables@winclip@headct": "done", "11_adaclip_main_tables@dinov2@mvtec": "done",
                      victim: states[victim], "11_adaclip_main_tables": "killed"}, states
    assert states[victim] in ("failed", "killed")
    if states[victim] == "failed":  # it lived to record why
        assert "stopped by SLURM (SIGTERM" in job_status(results, victim).detail
    assert not (results / "11_adaclip_main_tables.ipynb").exists()  # its final job never ran
    report = _clipad(["status", "--profile", "smoke"], environment)
    assert report.returncode == 1 and victim in report.stdout and "killed" in report.stdout

    resumed = _clipad(["run", *notebooks, "--executor", "slurm", "--resume", "--wait", "--poll", "1", *parameters],
                      environment)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "up to date, not submitted: 00_data_and_metrics" in resumed.stdout
    assert "up to date, not submitted: 11_adaclip_main_tables@winclip@headct" in resumed.stdout
    assert "up to date, not submitted: 11_adaclip_main_tables@dinov2@mvtec" in resumed.stdout
    assert f"submitted {victim} as SLURM job" in resumed.stdout
    assert (results / "11_adaclip_main_tables.ipynb").is_file() and (results / "shards" / f"{victim}.ipynb").is_file()
    assert all(s.state == "done" for s in job_statuses(results))

    ours, theirs = _comparable(load_records(results)), _comparable(load_records(tmp_path / "local" / "smoke"))
    assert ours.keys() == theirs.keys() and len(ours) == 8  # 00: two categories; 11: 2 methods x (2 + 1) categories
    for key, (input_hash, metrics) in theirs.items():
        assert ours[key][0] == input_hash, key
        assert ours[key][1].keys() == metrics.keys()
        for name, value in metrics.items():
            assert ours[key][1][name] == pytest.approx(value, abs=1e-6, nan_ok=True), (key, name)
