"""The studies: one module per study, each the claims it tests and ``analyze(runs)``.

A study module defines ``NAME``, ``TITLE``, ``QUESTION`` (one line) and
``analyze(runs: DataFrame) -> Analysis``; its runs come from its params.yaml section (the same
``base``/``grid``/``arms`` schema for every study).
"""
from __future__ import annotations

import importlib

MODULES = ("headline", "width", "rho", "noise", "sparsity", "compute", "regularization",
           "hessian", "simplicity", "datasize", "frontier", "batchnorm", "fitspeed", "tuning",
           "longer", "asam_adam")


def module(name: str):
    if name not in MODULES:
        raise KeyError(f"unknown study {name!r}; known: {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{name}")
