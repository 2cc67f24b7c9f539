"""Load and validate params.yaml: every mistake is one line naming the key, value and what is
allowed, raised before any training starts; all of a file's mistakes are reported at once.

Layout of params.yaml::

    profile: cpu                 # which sub-section of every study runs: quick | cpu | gpu
    max_core_hours: 24           # optional: a sweep estimated above this asks for --yes
    <study>:                     # one of STUDIES
      <profile>:
        base: {<TrainConfig field>: value, ...}       # shared by every run of the study
        grid: {<field>: [v1, v2, ...], ...}           # axes: the product of all lists
        arms: [{<field>: value or [values]}, ...]     # optional variants; a list is an axis

Every profile block present in the file is checked, not only the active one: a mistake in the
gpu block is found on a laptop, before a GPU is booked.
"""
from __future__ import annotations

import math
import re

import yaml

from samkit.studies import MODULES
from samkit.train.config import FIELD_TYPES, TrainConfig, check_field
from samkit.pipeline.yaml_checks import number_hint, safe_load_unique

PROFILES = ("quick", "cpu", "gpu")
STUDIES = MODULES  # the registry: one module per study in samkit/studies/
TOP_KEYS = ("profile", *STUDIES, "max_core_hours")
# A sweep (`samkit sweep`, a study's stage) whose runs to train are estimated above this many
# core-hours (samkit.sweep.engine.estimate) starts only with --yes, or under a higher max_core_hours.
MAX_CORE_HOURS = 24.0
SECTION_KEYS = ("base", "grid", "arms")

# What a study needs of every one of its runs, beyond each field being valid on its own:
# {study: {field: (test, what is allowed)}}. The study's notebook reads what these produce.
REQUIRED = {
    "hessian": {"hessian_samples": (lambda v: v > 0, "an int > 0 (the study measures the "
                                    "Hessian of each run on this many training points)")},
    "batchnorm": {"model": (lambda v: v == "preact_resnet18", "preact_resnet18 (the study "
                            "compares what BatchNorm layers do in SAM's second pass)"),
                  "optimizer": (lambda v: v in ("sam", "asam"), "sam or asam (a second, "
                                "perturbed pass)"),
                  "bn_drift": (lambda v: v is True, "true (the study compares the running "
                               "statistics' drift)")},
    "simplicity": {"dataset": (lambda v: v == "toy1d", "toy1d (the study reads each run's "
                               "learned 1-D function on a grid of inputs)")},
}


class ParamsError(ValueError):
    """Bad params.yaml entries; ``problems`` holds one line per mistake, str() joins them."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- reading

def load(path: str = "params.yaml") -> dict:
    """Parse and validate the whole file; returns the raw dict. Raises ParamsError with every
    problem found (duplicate keys, bad values in any profile, bad combinations)."""
    try:
        with open(path) as f:
            params, duplicates = safe_load_unique(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    problems = [f"{path}:{line}: {msg}" for line, msg in sorted(duplicates)]
    try:
        validate(params)
    except ParamsError as e:
        problems += e.problems
    if problems:
        raise ParamsError(problems)
    return params


# ----------------------------------------------------------------------------- checking

def validate(params) -> None:
    """Check every section and every profile block present; raise one ParamsError listing
    all problems."""
    if not isinstance(params, dict):
        raise ParamsError("params.yaml: top level must be a mapping of sections")
    problems = []
    for key in params:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown section; allowed: {', '.join(TOP_KEYS)}")
    profile = params.get("profile")
    if "profile" not in params:
        problems.append(f"profile: missing; allowed: {', '.join(PROFILES)}")
    elif profile not in PROFILES:
        problems.append(f"profile: got {profile!r}; allowed: {', '.join(PROFILES)}")
        profile = None
    limit = params.get("max_core_hours", MAX_CORE_HOURS)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < math.inf:
        problems.append(f"max_core_hours: got {limit!r}; allowed: a number > 0 (the estimated "
                        "core-hours a sweep may take without --yes)"
                        + number_hint(limit, "float"))
    for name in STUDIES:
        if name not in params:
            continue
        section = params[name]
        if not _mapping(problems, name, section, PROFILES):
            continue
        if profile is not None and profile not in section:
            problems.append(_missing_profile(name, section, profile))
        for p in PROFILES:
            if p in section:
                _profile_configs(problems, name, p, section[p])
    if problems:
        raise ParamsError(problems)


def study_configs(name: str, section, profile: str = "cpu") -> list[TrainConfig]:
    """The validated configs of one study under one profile (what a notebook runs)."""
    if profile not in PROFILES:
        raise ParamsError(f"profile: got {profile!r}; allowed: {', '.join(PROFILES)}")
    problems = []
    if _mapping(problems, name, section, PROFILES) and profile not in section:
        problems.append(_missing_profile(name, section, profile))
    if problems:
        raise ParamsError(problems)
    configs = _profile_configs(problems, name, profile, section[profile])
    if problems:
        raise ParamsError(problems)
    return configs


def _missing_profile(name, section, profile) -> str:
    return (f"{name}.{profile}: missing; this study has no settings for profile {profile!r} "
            f"(has: {', '.join(section) or 'none'})")


def _profile_configs(problems: list, name: str, profile: str, spec) -> list[TrainConfig]:
    """Append every problem of one study's profile block to ``problems``; its configs if none."""
    path = f"{name}.{profile}"
    before = len(problems)
    if not _mapping(problems, path, spec, SECTION_KEYS):
        return []
    base, grid, arms, bad = _checked_fields(problems, path, spec)
    configs = _checked_runs(problems, name, path, base, grid, arms, bad)
    return [] if len(problems) > before else configs


def _checked_fields(problems: list, path: str, spec: dict):
    """Check every value of the block's base, grid and arms on its own. Returns (base, grid,
    arms, bad): base and grid ({} when not a mapping), the arms that are mappings (None when
    there are none) and the keys with a bad value somewhere in the block."""
    base = spec.get("base") or {}
    grid = spec.get("grid") or {}
    bad = set()
    if _mapping(problems, f"{path}.base", base, None):
        for k, v in base.items():
            if not _field(problems, f"{path}.base.{k}", k, v):
                bad.add(k)
    else:
        base = {}
    if _mapping(problems, f"{path}.grid", grid, None):
        for k, values in grid.items():
            if not _axis(problems, f"{path}.grid.{k}", k, values):
                bad.add(k)
    else:
        grid = {}
    return base, grid, _checked_arms(problems, path, spec.get("arms"), bad), bad


def _checked_arms(problems: list, path: str, arms, bad: set):
    """The arms that are mappings (None: no arms, or not a non-empty list), each value checked
    (a list is an axis); the keys of bad values are added to ``bad``."""
    if arms is None:
        return None
    if not isinstance(arms, list) or not arms:
        problems.append(f"{path}.arms: got {arms!r}; allowed: a non-empty list of mappings")
        return None
    good_arms = []
    for i, arm in enumerate(arms):
        if not _mapping(problems, f"{path}.arms[{i}]", arm, None):
            continue
        good_arms.append(arm)
        for k, v in arm.items():
            where = f"{path}.arms[{i}].{k}"
            ok = (_axis(problems, where, k, v) if isinstance(v, list)
                  else _field(problems, where, k, v))
            if not ok:
                bad.add(k)
    return good_arms


def _checked_runs(problems: list, name: str, path: str, base, grid, arms, bad: set) -> list:
    """Every run of the block as a whole, as its TrainConfig: a combination of valid fields can
    still be impossible (n_train + n_val beyond the dataset), or lack what the study needs.
    Keys already reported are left out (their defaults stand in), and so are the problems that
    would involve them. Each problem is appended once, however many runs share it. Returns
    the configs (each run once; complete only when no problem was found)."""
    from samkit.sweep.engine import combinations, unique
    seen, configs = set(), []
    base = {k: v for k, v in base.items() if k not in bad}
    grid = {k: v for k, v in grid.items() if k not in bad}
    arms_ok = [{k: v for k, v in arm.items() if k not in bad} for arm in arms or []]
    for kwargs in combinations(base, grid, arms_ok or None):
        msgs, cfg = _run_problems(name, kwargs, bad)
        configs += [cfg] if cfg is not None else []
        for msg in msgs:
            if msg not in seen:
                seen.add(msg)
                problems.append(f"{path}: {msg}")
    return unique(configs)


def _run_problems(name: str, kwargs: dict, bad: set) -> tuple[list[str], TrainConfig | None]:
    """What is wrong with one run's fields: what the study requires of it, early stopping
    asked for without a validation split, then every problem TrainConfig finds (it names only
    the first: drop that key and ask again); and its TrainConfig when TrainConfig accepts all
    of its fields (the one place a run's values are validated)."""
    msgs, skip = [], set(bad)
    # TrainConfig's default (on) is harmless without n_val: "best" is then the last epoch, as
    # asked. Written out as true, it would report the last epoch as early-stopped.
    if kwargs.get("early_stopping") is True and not kwargs.get("n_val") and not \
            {"early_stopping", "n_val"} & bad:
        msgs.append("early_stopping: got true with n_val 0; allowed: n_val > 0 (early "
                    "stopping picks the epoch of best validation accuracy), or "
                    "early_stopping: false")
    for key, (ok, allowed) in REQUIRED.get(name, {}).items():
        value = kwargs.get(key, TrainConfig.__dataclass_fields__[key].default)
        if key not in bad and not ok(value):
            set_by = "" if key in kwargs else " (the default)"
            msgs.append(f"{key}: got {value!r}{set_by}; allowed: {allowed}")
    complete = True
    while True:
        try:
            cfg = TrainConfig(**kwargs)
            return msgs, cfg if complete else None
        except ValueError as e:
            complete = False
            msg = str(e)
            key = msg.split(":", 1)[0]
            if not any(re.search(rf"\b{k}\b", msg) for k in skip):
                msgs.append(msg)
            if key not in kwargs:
                return msgs, None
            skip.add(key)
            kwargs = {k: v for k, v in kwargs.items() if k != key}


def _mapping(problems, path, value, allowed) -> bool:
    """Is ``value`` a mapping (with keys in ``allowed`` if given)? Problems are appended."""
    if not isinstance(value, dict):
        problems.append(f"{path}: got {value!r}; allowed: a mapping"
                        + (f" with keys {', '.join(allowed)}" if allowed else ""))
        return False
    ok = True
    if allowed:
        for k in value:
            if k not in allowed:
                problems.append(f"{path}.{k}: unknown key; allowed: {', '.join(allowed)}")
                ok = False
    return ok


def _field(problems, path, key, value) -> bool:
    try:
        check_field(key, value)
    except ValueError as e:
        msg = str(e).split(": ", 1)[1]
        problems.append(f"{path}: {msg}{number_hint(value, FIELD_TYPES.get(key))}")
        return False
    return True


def _axis(problems, path, key, values) -> bool:
    if not isinstance(values, list) or not values:
        problems.append(f"{path}: got {values!r}; allowed: a non-empty list of values")
        return False
    ok, seen = True, []
    for i, v in enumerate(values):
        if not _field(problems, f"{path}[{i}]", key, v):
            ok = False
            continue
        if v in seen:
            problems.append(f"{path}[{i}]: got {v!r} twice; allowed: each value once")
            ok = False
        seen.append(v)
    return ok
