"""The pipeline's files that list the studies, written from the registry (samkit.studies).

dvc.yaml's ``studies`` list (the template stage's foreach) and its ``plots`` (one per study,
from the module's ``PLOT``), and the book's table of contents (each published study under its
``PART``, in ``POSITION`` order), are derived, never edited by hand: ``python -m samkit sync``
writes them, ``python -m samkit sync --check`` (and the tests) fail while they are stale. So a
new study is its module, its notebook, its params block and its test; nothing else.
"""
from __future__ import annotations

import json
import os
import re

from samkit import studies
from samkit.atomic import replacing

DVC_FILE = "dvc.yaml"
TOC_FILE = os.path.join("book", "_toc.yml")
BEGIN, END = "# >>> written by `python -m samkit sync`", "# <<<"
# The book's pages that are no study: (part, page), appended to their part.
OTHER_PAGES = (("Cost and method", "performance"), ("Cost and method", "reproduce"),
               ("Sources", "references"))


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a YAML double-quoted scalar


def dvc_studies_block() -> str:
    return f"  - studies: [{', '.join(studies.PUBLISHED)}]\n"


def dvc_plots_block() -> str:
    lines = ["plots:\n"]
    for name in studies.PUBLISHED:
        p = studies.module(name).PLOT
        lines += [f"  - {_quoted(name + ', ' + p['title'])}:\n",
                  f"      template: {p['template']}\n",
                  f"      x: {p['x']}\n",
                  "      y:\n",
                  f"        results/${{profile}}/{name}/{p['table']}.csv: {p['y']}\n",
                  f"      x_label: {_quoted(p['x_label'])}\n",
                  f"      y_label: {_quoted(p['y_label'])}\n"]
    return "".join(lines)


def toc() -> str:
    parts = {part: [] for part in studies.PARTS}
    for name in studies.PUBLISHED:
        parts[studies.module(name).PART].append(f"studies/{name}")
    for part, page in OTHER_PAGES:
        parts.setdefault(part, []).append(page)
    out = ["# Written by `python -m samkit sync` from samkit/studies (each study's PART and\n",
           "# POSITION); edit those, not this file.\n",
           "format: jb-book\n", "root: intro\n", "parts:\n"]
    for part, pages in parts.items():
        if pages:
            out += [f"  - caption: {_quoted(part)}\n", "    chapters:\n"]
            out += [f"      - file: {p}\n" for p in pages]
    return "".join(out)


def _between_markers(text: str, blocks: list[str], path: str) -> str:
    """``text`` with the lines between each BEGIN/END marker pair replaced by ``blocks``."""
    pattern = re.compile(rf"(^[ ]*{re.escape(BEGIN)}\n).*?(^[ ]*{re.escape(END)}\n)",
                         re.M | re.S)
    found = pattern.findall(text)
    if len(found) != len(blocks):
        raise ValueError(f"{path}: expected {len(blocks)} '{BEGIN}' ... '{END}' blocks, "
                         f"found {len(found)}")
    it = iter(blocks)
    return pattern.sub(lambda m: m.group(1) + next(it) + m.group(2), text)


def expected(root: str = ".") -> dict[str, str]:
    """{path: the content it should have}."""
    dvc_path = os.path.join(root, DVC_FILE)
    with open(dvc_path) as f:
        dvc = _between_markers(f.read(), [dvc_studies_block(), dvc_plots_block()], dvc_path)
    return {dvc_path: dvc, os.path.join(root, TOC_FILE): toc()}


def stale(root: str = ".") -> list[str]:
    """The files whose content is not what ``write`` would give."""
    out = []
    for path, text in expected(root).items():
        with open(path) as f:
            if f.read() != text:
                out.append(path)
    return out


def write(root: str = ".") -> list[str]:
    """Write the stale files (atomically); returns them."""
    changed = []
    for path, text in expected(root).items():
        with open(path) as f:
            if f.read() == text:
                continue
        with replacing(path) as f:
            f.write(text)
        changed.append(path)
    return changed
