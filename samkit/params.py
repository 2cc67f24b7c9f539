"""Load and validate params.yaml: every mistake is one line naming the key, value and what is
allowed, raised before any training starts.

Layout of params.yaml::

    profile: cpu                 # which sub-section of every study runs: cpu | gpu
    <study>:                     # one of STUDIES
      <profile>:
        base: {<TrainConfig field>: value, ...}       # shared by every run of the study
        grid: {<field>: [v1, v2, ...], ...}           # axes: the product of all lists
        arms: [{<field>: value or [values]}, ...]     # optional variants; a list is an axis
"""
from __future__ import annotations

import yaml

from .train import TrainConfig, check_field

PROFILES = ("quick", "cpu", "gpu")
STUDIES = ("headline", "width", "rho", "noise", "sparsity", "compute", "regularization",
           "hessian", "simplicity", "datasize")
TOP_KEYS = ("profile", *STUDIES)
SECTION_KEYS = ("base", "grid", "arms")


class ParamsError(ValueError):
    """A bad params.yaml entry; str() is the one-line message for the user."""


def load(path: str = "params.yaml") -> dict:
    """Parse and validate the whole file; returns the raw dict."""
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    validate(params)
    return params


def validate(params) -> None:
    if not isinstance(params, dict):
        raise ParamsError("params.yaml: top level must be a mapping of sections")
    for key in params:
        if key not in TOP_KEYS:
            raise ParamsError(f"{key}: unknown section; allowed: {', '.join(TOP_KEYS)}")
    if "profile" not in params:
        raise ParamsError(f"profile: missing; allowed: {', '.join(PROFILES)}")
    profile = params["profile"]
    if profile not in PROFILES:
        raise ParamsError(f"profile: got {profile!r}; allowed: {', '.join(PROFILES)}")
    for name in STUDIES:
        if name in params:
            study_configs(name, params[name], profile)


def study_configs(name: str, section, profile: str = "cpu") -> list[TrainConfig]:
    """The validated configs of one study under one profile (what a notebook runs)."""
    if profile not in PROFILES:
        raise ParamsError(f"profile: got {profile!r}; allowed: {', '.join(PROFILES)}")
    _mapping(name, section, PROFILES)
    if profile not in section:
        raise ParamsError(f"{name}.{profile}: missing; this study has no settings for profile "
                          f"{profile!r} (has: {', '.join(section) or 'none'})")
    path = f"{name}.{profile}"
    spec = section[profile]
    _mapping(path, spec, SECTION_KEYS)
    base = spec.get("base") or {}
    grid = spec.get("grid") or {}
    arms = spec.get("arms")
    _mapping(f"{path}.base", base, None)
    for k, v in base.items():
        _field(f"{path}.base.{k}", k, v)
    _mapping(f"{path}.grid", grid, None)
    for k, values in grid.items():
        _axis(f"{path}.grid.{k}", k, values)
    if arms is not None:
        if not isinstance(arms, list) or not arms:
            raise ParamsError(f"{path}.arms: got {arms!r}; allowed: a non-empty list of mappings")
        for i, arm in enumerate(arms):
            _mapping(f"{path}.arms[{i}]", arm, None)
            for k, v in arm.items():
                if isinstance(v, list):
                    _axis(f"{path}.arms[{i}].{k}", k, v)
                else:
                    _field(f"{path}.arms[{i}].{k}", k, v)
    from .sweep import expand
    try:
        return expand(base, grid, arms)
    except ValueError as e:  # a combination of fields (each valid alone) that is not
        raise ParamsError(f"{path}: {e}") from None


def _mapping(path, value, allowed):
    if not isinstance(value, dict):
        raise ParamsError(f"{path}: got {value!r}; allowed: a mapping"
                          + (f" with keys {', '.join(allowed)}" if allowed else ""))
    if allowed:
        for k in value:
            if k not in allowed:
                raise ParamsError(f"{path}.{k}: unknown key; allowed: {', '.join(allowed)}")


def _field(path, key, value):
    try:
        check_field(key, value)
    except ValueError as e:
        msg = str(e).split(": ", 1)[1]
        raise ParamsError(f"{path}: {msg}") from None


def _axis(path, key, values):
    if not isinstance(values, list) or not values:
        raise ParamsError(f"{path}: got {values!r}; allowed: a non-empty list of values")
    seen = []
    for i, v in enumerate(values):
        _field(f"{path}[{i}]", key, v)
        if v in seen:
            raise ParamsError(f"{path}[{i}]: got {v!r} twice; allowed: each value once")
        seen.append(v)
