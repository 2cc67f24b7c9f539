"""What every benchmark script here shares: the model names they accept, the device and clock
they time on, the summary statistics they report and the provenance block of their JSON files.

One definition of each, so that two benchmark JSONs of one device carry the same device slug and
the same provenance fields, and a timing taken with ``--clock cpu`` means the same in each script.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import time

import torch

from samkit.provenance import cpu_model, git_commit

# --------------------------------------------------------------------------- models

# The benchmarks' short model names -> samkit.models' names.
MODEL_NAMES = {"mlp": "mlp", "preact18": "preact_resnet18"}


def parse_model(spec: str):
    """'mlp-1024' -> ('mlp', 1024), in the benchmarks' short names; None when ``spec`` is not a
    valid model name."""
    m = re.fullmatch(r"(mlp|preact18)-([1-9][0-9]*)", spec)
    return (m.group(1), int(m.group(2))) if m else None


def split_values(values) -> list[str]:
    """Command-line values given space or comma separated ("a b", "a,b") as one flat list."""
    return [v for item in values or [] for v in item.split(",") if v]


# --------------------------------------------------------------------------- devices, clocks

def device_slug(name: str) -> str:
    """A device's name as a file-name part: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def device_info(device: torch.device):
    """(name, slug, extra provenance fields) of the device a benchmark times on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        slug = device_slug(name) or "cuda"
        extra = dict(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                     tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                     tf32_cudnn=torch.backends.cudnn.allow_tf32,
                     cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        name, slug, extra = f"CPU ({cpu_model()})", "cpu", {}
    return name, slug, extra


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: a timed block must hold its kernels, not their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("wall", "cpu")
CPU_CLOCK_NEEDS = ("--clock: bad value 'cpu' here; allowed: cpu with --device cpu and --threads 1 "
                   "(a thread's CPU time misses other threads' and the GPU's work)")


def timer(clock: str):
    """The clock a benchmark reads: "wall" (perf_counter), or "cpu" (this thread's CPU time: on
    a CPU shared with other jobs, what the work costs rather than how long it waited for a
    core; meaningful with one intra-op thread on the CPU only, see ``cpu_clock_allowed``)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock: bad value {clock!r}; allowed: {', '.join(CLOCKS)}")
    return time.perf_counter if clock == "wall" else time.thread_time


def cpu_clock_allowed(clock: str, device_type: str, threads) -> bool:
    """Whether ``clock`` measures the whole work: the CPU clock sees one thread's work only."""
    return clock != "cpu" or (device_type == "cpu" and threads == 1)


@contextlib.contextmanager
def gc_paused():
    """No garbage collection inside the timed repetitions: a collection would land in one
    contender's block at random. Collected once before."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def summary(samples, scale: float = 1.0) -> dict:
    """median, min, first and third quartile (``statistics.quantiles``' default method) and the
    count of ``samples``, each times ``scale``."""
    values = [s * scale for s in samples]
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return dict(median=statistics.median(values), min=min(values), q1=q[0], q3=q[2],
                n=len(values), samples=values)


# --------------------------------------------------------------------------- provenance

def loadavg():
    """The 1, 5 and 15-minute load averages (None where the OS has none): timings are only as
    good as the load they were taken under."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def bench_provenance(argv, name, slug, extra, load_before, t_start, **more) -> dict:
    """What produced a benchmark JSON: code, device, versions, threads, the load average around
    the run, wall time since ``t_start`` (perf_counter) and the arguments."""
    return {
        "commit": git_commit(), "device": name, "device_slug": slug,
        "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "argv": sys.argv[1:] if argv is None else list(argv), **extra, **more,
    }
