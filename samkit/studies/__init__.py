"""The studies: one module per study in this folder, each the claims it tests and ``analyze(runs)``.

A study module defines ``NAME`` (its file name), ``TITLE``, ``QUESTION`` (one line),
``PART, POSITION`` (its page's part of the book, one of ``PARTS``, and its place there),
``PLOT`` (its ``dvc plots show`` view) and ``analyze(runs: DataFrame) -> Analysis``; ``QUEUED =
True`` while its cpu runs are still training. Its runs come from its params.yaml section (the
same ``base``/``grid``/``arms`` schema for every study). The registry is this folder: a module
whose name starts with ``_`` is a helper, every other one is a study, so adding a study is its
module, its notebook, its params block and its test (``python -m samkit sync`` then writes the
DVC stages and the book's table of contents from here).
"""
from __future__ import annotations

import importlib
import pkgutil

# The book's parts, in order (the front page and the table of contents follow it).
PARTS = ("Headline", "Overparameterization and SAM", "Sources' other claims",
         "Why: the minima SAM finds", "Cost and method")


def module(name: str):
    if name not in MODULES:
        raise KeyError(f"unknown study {name!r}; known: {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{name}")


def _in_book_order() -> tuple[str, ...]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        m = importlib.import_module(f"{__name__}.{info.name}")
        if m.NAME != info.name or m.PART not in PARTS:
            raise ImportError(f"study module {info.name}: NAME must be {info.name!r} and PART one "
                              f"of {PARTS}; got NAME={m.NAME!r}, PART={m.PART!r}")
        found[info.name] = (PARTS.index(m.PART), m.POSITION, info.name)
    return tuple(sorted(found, key=found.get))


MODULES = _in_book_order()
# The studies `dvc repro` stages and the book shows: all but the queued ones.
PUBLISHED = tuple(n for n in MODULES if not getattr(module(n), "QUEUED", False))
