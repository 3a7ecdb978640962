"""A single-node SLURM cluster on localhost, for trying and testing ``clipad run --executor slurm``.

Needs Debian's (or Ubuntu's) ``slurm-wlm`` and ``munge`` packages (``apt-get install slurm-wlm
munge``) and root, as slurmd runs jobs as their user. Everything lives under one folder: the munge
key and socket, ``slurm.conf`` (node ``localhost`` with this machine's CPUs and memory, one
``debug`` partition, no accounting, no cgroups), the controller's state, the spool and the logs.
The daemons are stopped by the PIDs they wrote there.

    python scripts/local_slurm.py start /tmp/slurm     # prints the SLURM_CONF to export
    SLURM_CONF=/tmp/slurm/slurm.conf clipad run 00_data_and_metrics --executor slurm --wait
    python scripts/local_slurm.py stop /tmp/slurm

tests/test_cluster.py starts one per test session through :class:`LocalSlurm`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")


def missing_binaries() -> list[str]:
    """The SLURM / munge programs this machine lacks (searched on PATH and in /usr/sbin)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in DAEMONS if shutil.which(name, path=search) is None]


def _binary(name: str) -> str:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])) or name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("cannot read MemTotal from /proc/meminfo")


class LocalSlurm:
    """munged + slurmctld + slurmd under ``root``; ``start()`` waits until the node is idle."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"

    @property
    def environment(self) -> dict[str, str]:
        """What a client (sbatch, squeue, submitit) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        root = self.root
        cpus = os.cpu_count() or 1
        # Declare a little less memory than the machine has: a node with less than it declares is drained.
        memory = max(512, int(_memory_mb() * 0.8))
        self.conf.write_text("\n".join([
            "ClusterName=clipadlocal",
            "SlurmctldHost=localhost",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root / 'munge.socket'}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",   # no cgroups: containers and CI machines rarely allow them
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "KillWait=5",                         # SIGTERM, then SIGKILL 5 s later
            "MinJobAge=600",                      # finished jobs stay visible to squeue/scontrol for 10 min
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: install Debian's slurm-wlm and munge packages")
        if os.geteuid() != 0:
            raise RuntimeError("a local slurmd must run as root (it starts jobs as their users)")
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        if not key.exists():
            subprocess.run([_binary("mungekey"), "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o600)
        self._write_config()
        subprocess.run([_binary("munged"), f"--key-file={key}", f"--socket={self.root / 'munge.socket'}",
                        f"--pid-file={self.root / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                        f"--seed-file={self.root / 'munged.seed'}", "--force"], check=True)
        env = {**os.environ, **self.environment}
        subprocess.run([_binary("slurmctld"), "-f", str(self.conf)], check=True, env=env)
        subprocess.run([_binary("slurmd"), "-f", str(self.conf), "-N", "localhost"], check=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run([_binary("sinfo"), "-h", "-n", "localhost", "-o", "%T"], capture_output=True,
                                   text=True, env=env).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the local SLURM node did not become idle in {timeout:.0f} s; logs in {self.root / 'log'}")

    def stop(self) -> None:
        """Stop slurmd, slurmctld and munged by the PIDs they wrote, waiting for each to exit."""
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("root", help="folder for the cluster's key, config, state and logs")
    args = parser.parse_args(argv)
    cluster = LocalSlurm(args.root)
    if args.action == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
