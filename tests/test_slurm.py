"""samkit.sweep.cluster against a real SLURM: a single-node cluster (Debian's slurmctld, slurmd and
munge, started here as root; controller and node at 127.0.0.1 on free ports, a munge key and
socket of their own: the system's /etc/slurm and /etc/munge are not used) runs two submitit
jobs that share one run cache.

Skipped, with the reason, where the daemons cannot run: not root, the packages missing
(`make setup` installs them when run as root), or a daemon that does not come up.
"""
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from samkit.sweep import engine as sweep
from samkit.sweep import store
from samkit.train.config import TrainConfig

TINY = dict(dataset="synthetic", n_train=64, model="mlp", width=8, epochs=2, batch_size=16,
            device="cpu", n_test=0)
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "squeue", "scancel", "munge")
UP_S = 30        # a daemon, or the node, that is not up after this will not come up
JOBS_S = 240     # two jobs of two tiny runs each: ~20 s on 2 busy cores (torch's import)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return f"(no {path.name})"


def _until(pred, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return pred()


class Cluster:
    """The daemons (each a child of this process, in the foreground) and the environment
    that points the SLURM commands at them."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        self.timings: dict[str, float] = {}

    def run(self, *cmd, timeout=30) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        log.close()

    def _died(self, name: str) -> str | None:
        proc = self.procs[name]
        if proc.poll() is None:
            return None
        logs = self.root / "log"
        return (f"{name} exited ({proc.returncode}): {_tail(logs / f'{name}.out')} "
                f"{_tail(logs / f'{name}.log')}")

    def start(self) -> str | None:
        """Start munged, slurmctld, slurmd; None once the node is idle, else why not."""
        r, host = self.root, socket.gethostname().split(".")[0]
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(mode=0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = r / "munge" / "munge.socket"
        (r / "slurm.conf").write_text(f"""\
ClusterName=samkit-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={len(os.sched_getaffinity(0))} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        t0 = time.monotonic()
        self._start("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                               f"--socket={sock}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                               f"--seed-file={r / 'munge' / 'munged.seed'}",
                               f"--log-file={r / 'log' / 'munged.log'}"])
        if not _until(lambda: self._died("munged") or self.run(
                "munge", "-S", str(sock), "-n").returncode == 0, UP_S) \
                or self._died("munged"):
            return self._died("munged") or f"munged: no credential after {UP_S} s: " \
                + _tail(r / "log" / "munged.log")
        self.timings["munged up"] = time.monotonic() - t0
        self._start("slurmctld", ["slurmctld", "-D", "-i"])
        self._start("slurmd", ["slurmd", "-D", "-N", host])

        def idle():
            return self._died("slurmctld") or self._died("slurmd") or self.run(
                "sinfo", "-h", "-o", "%T").stdout.strip() == "idle"
        if not _until(idle, UP_S, poll=0.5) or self._died("slurmctld") or self._died("slurmd"):
            state = self.run("sinfo", "-h", "-o", "%T %E").stdout.strip()
            return (self._died("slurmctld") or self._died("slurmd")
                    or f"the node is not idle after {UP_S} s (sinfo: {state!r}): "
                       f"{_tail(r / 'log' / 'slurmctld.log')} {_tail(r / 'log' / 'slurmd.log')}")
        self.timings["cluster up"] = time.monotonic() - t0
        return None

    def stop(self) -> None:
        """Cancel what is left of the jobs, then stop the daemons (slurmd first)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--user", str(os.getuid()), timeout=10)
                _until(lambda: not self.run("squeue", "-h", timeout=10).stdout.strip(), 15)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _why_not_here() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    missing = [c for c in DAEMONS + CLIENTS if shutil.which(c, path=os.environ.get("PATH", "")
                                                           + ":/usr/sbin:/sbin") is None]
    if missing:
        return (f"needs Debian's slurmctld, slurmd, slurm-client and munge ({', '.join(missing)} "
                "not found); `make setup` installs them when run as root")
    if os.geteuid() != 0:
        return "starts slurmctld, slurmd and munged as root (SlurmUser=root); not root here"
    return None


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    pytest.importorskip("submitit")   # pip install 'samkit[cluster]'
    why = _why_not_here()
    if why:
        pytest.skip(why)
    monkeypatch.setenv("PATH", os.environ["PATH"] + ":/usr/sbin:/sbin")
    # Short paths: the munge socket's path must fit a sockaddr_un (108 bytes).
    root = Path(os.environ.get("TMPDIR", "/tmp")).resolve() / f"samkit-slurm-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700)
    cluster = Cluster(root)
    try:
        why = cluster.start()
        if why:
            pytest.skip(f"the SLURM daemons cannot start here: {why}")
        monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        yield cluster
    finally:
        cluster.stop()
        if any(p.poll() is None for p in cluster.procs.values()):
            pytest.fail(f"a daemon is still running in {root}")  # left for a look
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_slurm_jobs_train_disjoint_runs_into_one_cache(slurm, tmp_path):
    """Four tiny runs, two SLURM jobs (a job array, as submitit's batch() submits it): each
    job trains exactly its share, every run once, all four land in the one cache, and
    their numbers equal a serial in-process sweep's."""
    submitit = pytest.importorskip("submitit")
    from samkit.sweep import cluster
    # Without slurmdbd, sacct has no records: submitit warns on every poll and goes by the
    # result files its jobs write, which is all this needs.
    quiet = logging.getLogger("submitit")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        _submit_and_check(slurm, tmp_path, submitit, cluster)
    finally:
        quiet.level = level


def _submit_and_check(slurm, tmp_path, submitit, cluster):
    cfgs = [TrainConfig(**TINY, seed=s) for s in range(4)]
    keys = [store.run_key(c) for c in cfgs]
    cache = tmp_path / "runs"
    ex = submitit.AutoExecutor(folder=str(tmp_path / "slurm_logs"), cluster="slurm")
    ex.update_parameters(timeout_min=10, cpus_per_task=1, slurm_partition="debug")
    t0 = time.monotonic()
    jobs = cluster.submit(cfgs, str(cache), ex, n_jobs=2)
    assert all(j.__class__.__name__ == "SlurmJob" for j in jobs)
    try:
        reports = cluster.wait(jobs, timeout=JOBS_S, poll_s=0.5)
    except TimeoutError as e:
        logs = " ".join(f"{j.job_id}: {_tail(Path(j.paths.stderr), 3)}" for j in jobs)
        ctld = _tail(slurm.root / "log" / "slurmctld.log", 5)
        pytest.fail(f"{e}; job logs: {logs}; slurmctld: {ctld}")
    slurm.timings["two jobs"] = time.monotonic() - t0

    # Each report came from inside its SLURM job (the array task's id), one per shard.
    assert sorted(r["job_id"] for r in reports) == sorted(str(j.job_id) for j in jobs)
    assert [r["shard"] for r in reports] == [0, 1]
    # Disjoint shares that cover every run: job i trained runs i, i + 2, nothing cached.
    assert [r["trained"] for r in reports] == [sorted(keys[0::2]), sorted(keys[1::2])]
    assert not any(r["cached"] for r in reports)
    assert sorted(f.name for f in cache.iterdir()) == sorted(f"{k}.json" for k in keys)

    got = sweep.run_sweep(cfgs, cache=str(cache), progress=False)
    assert got["cached"].all()   # nothing left to train: the jobs stored every run
    serial = sweep.run_sweep(cfgs, cache=str(tmp_path / "serial"), workers=1, progress=False)
    cols = [c for c in got.columns if c.startswith(("final_", "best_"))]
    assert cols
    pd.testing.assert_frame_equal(got[cols], serial[cols])

    # Resubmitting the same list trains nothing: every job finds its share in the cache.
    t0 = time.monotonic()
    again = cluster.wait(cluster.submit(cfgs, str(cache), ex, n_jobs=2), timeout=JOBS_S,
                         poll_s=0.5)
    slurm.timings["two jobs again"] = time.monotonic() - t0
    assert [r["trained"] for r in again] == [[], []]
    assert [r["cached"] for r in again] == [sorted(keys[0::2]), sorted(keys[1::2])]
    print("\nSLURM timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in slurm.timings.items()))
