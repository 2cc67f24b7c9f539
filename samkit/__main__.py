"""Command line: ``python -m samkit {train,validate,sweep,stage,cache,sync} ...`` (``--help`` on
each). `train` runs anywhere (``pip install samkit``); the others work on a checkout of the
samkit repository (its params.yaml, dvc.yaml, notebooks/ and run cache) and need the study
extra (``pip install 'samkit[study]'``; ``stage`` needs ``'samkit[book]'``)."""
from __future__ import annotations

# Only the standard library at import time: ``samkit --help`` must answer in well under a
# second, and torch alone takes seconds to import. Each command imports what it needs.
import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import sys
import time

# Commands that work on a repository checkout (what each reads there: _outside_repo).
REPO_COMMANDS = ("validate", "sweep", "stage", "cache", "sync")
# Third-party modules of the extras (pyproject.toml): a command that finds one missing says
# which extra to install, in one line.
BOOK_MODULES = {"papermill", "nbformat", "nbclient", "seaborn", "matplotlib", "jupyter_book",
                "ipykernel", "dvc"}
STUDY_MODULES = {"pandas", "scipy", "yaml", "tqdm", "filelock", "statsmodels", "torchvision"}
CLUSTER_MODULES = {"submitit"}


def _help(name: str) -> str:
    from samkit.train.config import HELP
    # A field added to TrainConfig without a line here still gets its flag (and the CLI works).
    return HELP.get(name, f"TrainConfig.{name}")


def _train_parser(sub, full: bool):
    """The `train` subcommand; its flags (one per TrainConfig field: imports torch) only when
    ``full``, i.e. when `train` is the command being run."""
    p = sub.add_parser("train", help="train one model and print its result as JSON",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if not full:
        return
    from samkit.train.config import TrainConfig
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "early_stopping":  # None: on exactly when there is a validation split
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=_help(f.name))
        elif f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=_help(f.name))
        else:
            p.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type],
                           default=f.default, help=_help(f.name), metavar=f.type.upper())
    p.add_argument("--checkpoint", help="checkpoint path: written every epoch, resumed if present")
    p.add_argument("--history", action="store_true", help="include the per-epoch history")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--data-root", default=None, help="dataset folder (default $SAMKIT_DATA, else ~/.cache/samkit/data)")


def cmd_train(args, parser):
    from samkit.train.config import TrainConfig
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if values["early_stopping"] is None:
        values["early_stopping"] = values["n_val"] > 0
    elif values["early_stopping"] and not values["n_val"]:
        # Early stopping picks the epoch of best validation accuracy: without a validation
        # split it would silently report the last epoch.
        parser.error("early_stopping: got --early-stopping with n_val 0; allowed: "
                     "--n-val N (N > 0) to early-stop on a validation split, or "
                     "--no-early-stopping")
    try:
        cfg = TrainConfig(**values)
    except ValueError as e:
        parser.error(str(e))
    if args.data_root:
        os.environ["SAMKIT_DATA"] = args.data_root
    if importlib.util.find_spec("tqdm") is None:  # a torch + numpy install: no progress bar
        args.quiet = True
    from samkit.train.checkpoint import CheckpointError
    from samkit.train.build import load_for
    from samkit.train.loop import train
    try:  # a missing, corrupt or too small dataset: one line that says how to fix it
        data = load_for(cfg)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    try:
        result = train(cfg, checkpoint=args.checkpoint, quiet=args.quiet, data=data)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.history:
        result.pop("history")
    print(json.dumps(result, indent=1))


def cmd_validate(args, parser):
    from samkit.pipeline.params import MAX_CORE_HOURS, STUDIES, ParamsError, load
    from samkit.pipeline.stage import params_errors
    from samkit.sweep import engine as sweep
    try:
        params = load(args.params)
    except ParamsError as e:
        return params_errors(e)
    print(f"{args.params}: ok")
    configs = _configs(params, params["profile"], [s for s in STUDIES if s in params])
    todo, hours = sweep.estimate(configs, args.cache)
    limit = params.get("max_core_hours", MAX_CORE_HOURS)
    print(f"profile {params['profile']}: {len(configs)} runs, {len(todo)} not in the run cache "
          f"{args.cache}: an estimated {hours:,.1f} core-hours"
          + (f", over max_core_hours {limit:g}: `samkit sweep` and the stages start them only "
             "with --yes" if hours > limit else ""))
    return 0


def _configs(params, profile, studies, lowest_seed: bool = False) -> dict:
    """{run key: config} of ``studies`` under ``profile``, each run once (studies share
    runs), in their order. ``lowest_seed``: only each study's lowest seed, the fixed sample
    of the retrain check (samkit.analysis.robustness), chosen by rule and not by looking."""
    from samkit.pipeline.params import study_configs
    from samkit.sweep import store
    configs = {}
    for name in studies:
        runs = study_configs(name, params[name], profile)
        lowest = min((cfg.seed for cfg in runs), default=None)
        for cfg in runs:
            if not lowest_seed or cfg.seed == lowest:
                configs.setdefault(store.run_key(cfg), cfg)
    return configs


def _over_budget(what, configs, cache, params, params_path, yes, workers=None) -> bool:
    """Print the runs ``cache`` lacks and their estimated cost (samkit.sweep.engine.estimate); True,
    after one ``error:`` line, when that is over params' max_core_hours and not ``yes``."""
    from samkit.pipeline.params import MAX_CORE_HOURS
    from samkit.sweep import engine as sweep
    todo, hours = sweep.estimate(configs, cache)
    if not todo:
        return False
    limit = params.get("max_core_hours", MAX_CORE_HOURS)
    workers = min(workers or sweep.default_workers(), len(todo))
    cost = (f"{len(todo)} runs to train, an estimated {hours:,.1f} core-hours (about "
            f"{hours / workers:,.1f} h on {workers} workers)")
    if hours > limit and not yes:
        print(f"error: {what}: {cost}; allowed: at most max_core_hours {limit:g} unless "
              f"confirmed: pass --yes, or raise max_core_hours in {params_path}",
              file=sys.stderr)
        return True
    print(f"{what}: {cost}", flush=True)
    return False


def cmd_sweep(args, parser):
    """Train every missing run of the chosen studies into the run cache (no notebooks): the
    long part of `dvc repro`, run on its own, e.g. under nohup; rerun it to resume."""
    from samkit.train.checkpoint import CheckpointError
    from samkit.pipeline.params import ParamsError, STUDIES, load
    from samkit.pipeline.signals import interrupts_forwarded
    from samkit.pipeline.stage import params_errors
    from samkit.sweep import engine as sweep
    from samkit.sweep import store
    try:
        params = load(args.params)
        profile = args.profile or params["profile"]
        studies = (args.studies.split(",") if args.studies
                   else [name for name in STUDIES if name in params])
        for name in studies:
            if name not in STUDIES or name not in params:
                raise ParamsError(f"--studies: got {name!r}; allowed: "
                                  f"{', '.join(s for s in STUDIES if s in params)}")
        configs = _configs(params, profile, studies, args.lowest_seed)
    except ParamsError as e:
        return params_errors(e)
    t0 = time.time()
    print(f"{len(configs)} runs of {', '.join(studies)} (profile {profile})", flush=True)
    if _over_budget("sweep", configs, args.cache, params, args.params, args.yes, args.workers):
        return 2
    try:
        with interrupts_forwarded() as stop:
            runs = sweep.run_sweep(list(configs.values()), cache=args.cache, workers=args.workers)
    except (store.CacheError, CheckpointError, sweep.WorkerFailed) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        signum = stop.signum or signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name}) after {time.time() - t0:.0f} s: "
              "finished runs are in the run cache, an interrupted run resumes from its last "
              "checkpoint; rerun to go on", file=sys.stderr, flush=True)
        return 128 + signum
    print(f"done in {time.time() - t0:.0f} s: {int((runs['status'] == 'ok').sum())} ok, "
          f"{int((runs['status'] != 'ok').sum())} diverged", flush=True)
    return 0


def cmd_stage(args, parser):
    from samkit.pipeline.params import ParamsError, STUDIES, load
    from samkit.pipeline.stage import PAGES, run_stage
    if args.study not in (*STUDIES, *PAGES):  # as argparse's choices would say it
        parser.error(f"argument study: invalid choice: {args.study!r} (choose from "
                     f"{', '.join(map(repr, (*STUDIES, *PAGES)))})")
    try:
        params = load(args.params)
    except ParamsError:
        params = None  # the stage reports it
    if params and args.study in params and _over_budget(
            args.study, _configs(params, params["profile"], [args.study]), "results/runs",
            params, args.params, args.yes):
        return 2
    why = _outside_repo(args, stage_files=True)
    if why:  # before the stage touches anything here
        print(f"error: {why}", file=sys.stderr)
        return 2
    status = run_stage(args.study, args.params, args.verbose)
    if status > 128:
        # Interrupted, outputs restored: leave now. The interpreter's teardown (papermill's
        # kernel client, zmq) takes over a second on a busy machine, and Ctrl-C waits for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def cmd_cache(args, parser):
    """seal: add the sha256 checksum to every stored result that lacks one (results stored
    before checksums existed; run it once, when no sweep is writing); verify: check them all."""
    from samkit.sweep import store
    if not os.path.isdir(args.cache):
        print(f"error: --cache: got {args.cache!r}; allowed: a folder of stored results",
              file=sys.stderr)
        return 2
    if args.action == "seal":
        done, before, problems = store.seal(args.cache)
        summary = f"{args.cache}: sealed {done}, {before} sealed before"
    else:
        problems, files = [], store.result_files(args.cache)
        for path in files:
            try:
                store.read_result(path)
            except store.CacheError as e:
                problems.append(str(e))
        summary = f"{args.cache}: {len(files) - len(problems)} of {len(files)} results verified"
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    print(summary + (f", {len(problems)} refused" if problems else ""))
    return 1 if problems else 0


def cmd_sync(args, parser):
    """Write dvc.yaml's study lists and plots and the book's table of contents from the
    registry (samkit/studies); --check: only say which are stale (exit 1)."""
    from samkit.pipeline import sync
    files = sync.stale() if args.check else sync.write()
    for path in files:
        print(f"{'stale' if args.check else 'wrote'}: {path}"
              + (" (run `python -m samkit sync`)" if args.check else ""))
    return 1 if args.check and files else 0


def _outside_repo(args, stage_files: bool = False) -> str | None:
    """None, or why ``args.command`` (a repository command) cannot run here: what it reads
    from the working directory of a samkit checkout is missing, and its default was not
    overridden. `stage` also needs dvc.yaml and notebooks/: checked here when its params
    file is the default, else (``stage_files``) by cmd_stage once that file's budget check
    has spoken."""
    missing, override = [], ""
    if args.command in ("validate", "sweep", "stage") and args.params == "params.yaml" \
            and not os.path.isfile("params.yaml"):
        missing.append("params.yaml")
        override = {"validate": "pass a params file", "sweep": "pass --params FILE"}.get(
            args.command, "")
    if args.command == "sync":
        missing += [f for f in ("dvc.yaml", "book/_toc.yml") if not os.path.isfile(f)]
    if args.command == "stage" and (missing or stage_files):
        missing += [f for f in ("dvc.yaml", "notebooks/") if not os.path.exists(f)]
    if args.command == "cache" and args.cache == "results/runs" \
            and not os.path.isdir(args.cache) \
            and not (os.path.isfile("params.yaml") and os.path.isfile("dvc.yaml")):
        missing.append("results/runs/")
        override = "pass --cache DIR"
    if not missing:
        return None
    return (f"samkit {args.command}: not in a samkit repository checkout (no "
            f"{', '.join(missing)} in {os.getcwd()}); run it at the root of a clone of the "
            "samkit repository" + (f", or {override}" if override else "")
            + " (`samkit train` runs anywhere)")


def _missing_extra(command: str, e: ModuleNotFoundError) -> str | None:
    """The install line for a module of an extra that ``command`` lacks, else None."""
    top = (e.name or "").split(".")[0]
    for extra, modules in (("book", BOOK_MODULES), ("study", STUDY_MODULES),
                           ("cluster", CLUSTER_MODULES)):
        if top in modules:
            # `stage` runs a notebook: the book extra (which includes the study extra)
            return f"pip install 'samkit[{'book' if command == 'stage' else extra}]'"
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # The command being run (the first word that is not an option: the top level has only
    # -h): only its parser is built in full, so `samkit --help` imports no torch.
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="samkit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub, full=command == "train")
    v = sub.add_parser("validate", help="check params.yaml (one line per problem, exit 2); "
                       "estimate the cost of the runs the run cache lacks")
    v.add_argument("params", nargs="?", default="params.yaml")
    v.add_argument("--cache", default="results/runs")
    w = sub.add_parser("sweep", help="train the runs of some studies into the run cache")
    w.add_argument("--studies", help="comma-separated (default: all, in params.yaml order)")
    w.add_argument("--profile", help="default: params.yaml's profile")
    w.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    w.add_argument("--cache", default="results/runs")
    w.add_argument("--lowest-seed", action="store_true",
                   help="only each study's lowest seed: the retrain check's sample (`make "
                        "verify` trains it into results/retrain/<name>/)")
    w.add_argument("--params", default="params.yaml")
    yes = "start even if the runs to train are estimated above params.yaml's max_core_hours"
    w.add_argument("--yes", action="store_true", help=yes)
    s = sub.add_parser("stage", help="run one study notebook (a DVC stage)")
    choices = None
    if command == "stage" and {"-h", "--help"} & set(argv):  # else cmd_stage checks the name
        try:
            from samkit.pipeline.params import STUDIES
            from samkit.pipeline.stage import PAGES
            choices = (*STUDIES, *PAGES)
        except ModuleNotFoundError:  # no study extra: the command itself says so
            pass
    s.add_argument("study", choices=choices)
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--verbose", action="store_true", help="stream the notebook's output")
    s.add_argument("--yes", action="store_true", help=yes)
    c = sub.add_parser("cache", help="seal (add checksums to) or verify the stored results")
    c.add_argument("action", choices=("seal", "verify"),
                   help="seal: add the sha256 field to every result lacking one (once, when no "
                        "sweep is writing); verify: check every result")
    c.add_argument("--cache", default="results/runs")
    y = sub.add_parser("sync", help="write dvc.yaml's study lists and plots and the book's "
                       "table of contents from the registry (samkit/studies)")
    y.add_argument("--check", action="store_true", help="only list the stale files (exit 1)")
    args = parser.parse_args(argv)
    if args.command in REPO_COMMANDS:
        why = _outside_repo(args)
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    sub_parser = sub.choices[args.command]
    handler = {"train": cmd_train, "validate": cmd_validate, "sweep": cmd_sweep,
               "stage": cmd_stage, "cache": cmd_cache, "sync": cmd_sync}[args.command]
    try:
        return handler(args, sub_parser) or 0
    except ModuleNotFoundError as e:
        fix = _missing_extra(args.command, e)
        if fix is None:
            raise
        print(f"error: samkit {args.command}: needs {e.name}, which is not installed; "
              f"allowed: {fix}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
