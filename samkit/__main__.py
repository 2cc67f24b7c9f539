"""Command line: ``python -m samkit {train,validate,sweep,stage} ...`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time

from .signals import interrupts_forwarded
from .stage import PAGES, params_errors
from .config import HELP, TrainConfig

def _help(name: str) -> str:
    # A field added to TrainConfig without a line here still gets its flag (and the CLI works).
    return HELP.get(name, f"TrainConfig.{name}")


def _train_parser(sub):
    p = sub.add_parser("train", help="train one model and print its result as JSON",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    from .train import load_for, run
    try:  # a missing, corrupt or too small dataset: one line that says how to fix it
        data = load_for(cfg)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    result = run(cfg, checkpoint=args.checkpoint, quiet=args.quiet, data=data)
    if not args.history:
        result.pop("history")
    print(json.dumps(result, indent=1))


def cmd_validate(args, parser):
    from .params import ParamsError, load
    try:
        load(args.params)
    except ParamsError as e:
        return params_errors(e)
    print(f"{args.params}: ok")
    return 0


def cmd_sweep(args, parser):
    """Train every missing run of the chosen studies into the run cache (no notebooks): the
    long part of `dvc repro`, run on its own, e.g. under nohup; rerun it to resume."""
    from .params import ParamsError, STUDIES, load, study_configs
    from . import sweep
    try:
        params = load(args.params)
        profile = args.profile or params["profile"]
        studies = args.studies.split(",") if args.studies else list(STUDIES)
        for name in studies:
            if name not in STUDIES:
                raise ParamsError(f"--studies: got {name!r}; allowed: {', '.join(STUDIES)}")
        configs, seen = [], set()
        for name in studies:
            for cfg in study_configs(name, params[name], profile):
                key = sweep.run_key(cfg)
                if key not in seen:  # runs shared by several studies train once
                    seen.add(key)
                    configs.append(cfg)
    except ParamsError as e:
        return params_errors(e)
    t0 = time.time()
    print(f"{len(configs)} runs of {', '.join(studies)} (profile {profile})", flush=True)
    try:
        with interrupts_forwarded() as stop:
            runs = sweep.run(configs, cache=args.cache, workers=args.workers)
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
    from .stage import run
    return run(args.study, args.params, args.verbose)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="samkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    v = sub.add_parser("validate", help="check params.yaml; one line per problem, exit 2")
    v.add_argument("params", nargs="?", default="params.yaml")
    w = sub.add_parser("sweep", help="train the runs of some studies into the run cache")
    w.add_argument("--studies", help="comma-separated (default: all, in params.yaml order)")
    w.add_argument("--profile", help="default: params.yaml's profile")
    w.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    w.add_argument("--cache", default="results/runs")
    w.add_argument("--params", default="params.yaml")
    s = sub.add_parser("stage", help="run one study notebook (a DVC stage)")
    from .params import STUDIES
    s.add_argument("study", choices=(*STUDIES, *PAGES))
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--verbose", action="store_true", help="stream the notebook's output")
    args = parser.parse_args(argv)
    sub_parser = sub.choices[args.command]
    handler = {"train": cmd_train, "validate": cmd_validate, "sweep": cmd_sweep,
               "stage": cmd_stage}[args.command]
    return handler(args, sub_parser) or 0


if __name__ == "__main__":
    sys.exit(main())
