"""One DVC stage: validate params.yaml, execute a study's notebook into the book, and never
leave the study's published outputs half-changed (``samkit stage <study>`` runs ``run``).

The executed notebook replaces the book's copy only at the end; the study's results are copied
aside first and put back unless the notebook succeeded (samkit.pipeline.backup); Ctrl-C and SIGTERM stop
the notebook's kernel and its sweep workers within seconds (samkit.pipeline.signals).
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import threading
import time

from samkit.pipeline.backup import Backup, remove_dead_temps, restore_dead_backups
from samkit.pipeline import signals
from samkit.pipeline.signals import stop_on_signals

# Pages that are not studies: the front page (all studies' verdicts) and the benchmarks.
PAGES = {"summary": os.path.join("book", "intro.ipynb"),
         "performance": os.path.join("book", "performance.ipynb")}


def params_errors(e) -> int:
    """Print every problem of a ParamsError, one ``error:`` line each; the exit status 2."""
    for line in e.problems:
        print(f"error: {line}", file=sys.stderr)
    return 2


def run_stage(study: str, params_path: str = "params.yaml", verbose: bool = False) -> int:
    """Validate params.yaml, then execute notebooks/<study>.ipynb with papermill into the
    book; the executed copy and the study's results change only when the run succeeded.
    Returns the exit status (0, 1 failed, 2 bad params, 128 + signal)."""
    from samkit.pipeline.params import ParamsError, load
    out = PAGES.get(study, os.path.join("book", "studies", f"{study}.ipynb"))
    remove_dead_temps(f"{out}.tmp.", ".ipynb")
    restore_dead_backups(study)
    try:
        params = load(params_path)
    except ParamsError as e:
        return params_errors(e)
    parameters = {"profile": params.get("profile", "cpu")}
    if study in params:
        parameters[study] = params[study]
    elif study not in PAGES:
        print(f"error: {study}: no section {study!r} in {params_path}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t0 = time.time()
    with stop_on_signals() as stop:
        try:
            backup = Backup(study, _stage_outputs(study, parameters["profile"], out))
        except OSError as e:
            print(f"error: {study}: cannot copy its outputs aside before running: {e}",
                  file=sys.stderr)
            return 1
        failure = _execute_and_publish(study, out, parameters, verbose, stop, backup)
    return _exit_status(study, out, failure, stop.signum, backup.committed, time.time() - t0)


def _execute_and_publish(study, out, parameters, verbose, stop, backup) -> str | None:
    """Execute the notebook into a temporary copy; publish it only if it ran to the end
    uninterrupted, else put the outputs back. None, or what went wrong in one line."""
    src = os.path.join("notebooks", f"{study}.ipynb")
    tmp = f"{out}.tmp.{os.getpid()}.ipynb"
    failure = None
    try:
        if not stop.signum:
            failure = _execute(src, tmp, parameters, verbose, stop)
        if not failure and not stop.signum:
            _hide_default_parameters(tmp)
            _strip_run_noise(tmp, out)
            backup.commit(lambda: os.replace(tmp, out), keep=(out,))
    except Exception as e:  # e.g. the notebook is missing or the kernel did not start
        failure = f"{type(e).__name__}: {' '.join(str(e).split())}"
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # keep the previous executed notebook, not a failed one
        if not backup.committed:
            backup.restore()
    return failure


def _exit_status(study, out, failure, signum, committed, seconds) -> int:
    """Say how the stage ended, on stderr unless it succeeded; its exit status."""
    if signum:
        name = signal.Signals(signum).name
        state = ("it had just finished: its outputs are new" if committed else
                 "its outputs are as they were; finished runs are in the run cache and an "
                 "interrupted run resumes from its last checkpoint")
        print(f"interrupted: {study}: stopped by {name} after {seconds:.0f} s; {state}",
              file=sys.stderr)
        return 128 + signum
    if failure:
        print(f"error: {study}: {failure}", file=sys.stderr)
        return 1
    print(f"{study}: {out} in {seconds:.0f} s")
    return 0


def _execute(src, tmp, parameters, verbose, stop) -> str | None:
    """Run the notebook with papermill in a thread (so that this, the main thread, keeps its
    signal handlers and can stop the kernel); None, or what went wrong in one line."""
    import papermill
    outcome = {}

    def target():
        try:
            # log_level: the kernel's own chatter ("Kernel is running over TCP ...") is noise
            # on the terminal of `dvc repro`; its errors still show.
            papermill.execute_notebook(src, tmp, parameters=parameters, kernel_name="python3",
                                       cwd=".", progress_bar=False, log_output=verbose,
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except papermill.PapermillExecutionError as e:
            outcome["error"] = f"notebook failed in cell {e.exec_count}: {e.ename}: {e.evalue}"
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"

    runner = threading.Thread(target=target, name="papermill", daemon=True)
    runner.start()
    while runner.is_alive():
        runner.join(0.1)
        if stop.signum:
            stop.stop_kernels()
            if time.monotonic() - stop.since > signals.STOP_GRACE_S + signals.STOP_WAIT_S:
                break  # papermill does not return: leave it (a daemon thread) behind
    return outcome.get("error")


def _stage_outputs(study: str, profile: str, notebook: str) -> list[str]:
    """What DVC tracks as the stage's outputs (dvc.yaml's study template, and the pages):
    the study's results, its DVC metrics and its executed notebook."""
    return [os.path.join("results", profile, study),
            os.path.join("results", profile, "dvc_metrics", f"{study}.json"), notebook]


def _hide_default_parameters(path):
    """No code on the book's pages: the notebook's own defaults cell (a tiny smoke test) would
    mislead there, and the values it ran with are papermill's injected cell, which stays in
    the executed notebook (and papermill's metadata) but is not shown either; each page ends
    with its provenance instead."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if {"parameters", "injected-parameters"} & set(tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, path)


# What differs between two executions of the same notebook on the same numbers (nothing a
# reader sees): papermill's and nbclient's timings, the temporary path papermill wrote to, the
# random id of the injected parameters cell, pandas Styler's random table id (T_xxxxx, in the
# HTML and its CSS) and object reprs with a memory address.
_PAPERMILL_TIMES = ("start_time", "end_time", "duration")
_STYLER_ID = re.compile(r'<table id="T_([0-9a-f]+)"')
_ADDRESS = re.compile(r" at 0x[0-9a-f]+>")


def _strip_run_noise(path, published_as):
    """Rewrite the executed notebook so that it depends only on what it shows: re-executing
    a notebook whose numbers did not change leaves `git diff` empty."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in _PAPERMILL_TIMES:
        meta.pop(key, None)
    if "output_path" in meta:
        meta["output_path"] = published_as
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for key in _PAPERMILL_TIMES:
            cell.metadata.get("papermill", {}).pop(key, None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.id = "injected-parameters"
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if isinstance(data.get("text/plain"), str):
                data["text/plain"] = _ADDRESS.sub(">", data["text/plain"])
            if isinstance(data.get("text/html"), str):
                data["text/html"] = _stable_styler_ids(data["text/html"])
    nbformat.write(nb, path)


def _stable_styler_ids(html: str) -> str:
    """The Styler tables' random ids replaced by ids derived from the output itself (a hash of
    it with the ids blanked, and the table's place in it)."""
    uids = list(dict.fromkeys(_STYLER_ID.findall(html)))
    blank = html
    for uid in uids:
        blank = blank.replace(f"T_{uid}", "T_")
    digest = hashlib.sha1(blank.encode()).hexdigest()[:8]
    for i, uid in enumerate(uids):
        html = html.replace(f"T_{uid}", f"T_{digest}{i}")
    return html
