"""The sources' own effect sizes, as reference data beside our estimates.

Read by eye off the published figures (good to about ±0.02 pp), never produced here: Shin et
al., "Critical influence of overparameterization on sharpness-aware minimization", Figure 1(a),
MNIST 3-layer MLP panel (SAM − SGD validation accuracy, mean over seeds, by parameters).
"""
from __future__ import annotations

import numpy as np

SHIN_MLP_PANEL = {60_000: 0.0007, 130_000: 0.0006, 270_000: 0.0018, 1_430_000: 0.0019,
                  5_370_000: 0.0019}
SHIN_MLP_WHERE = "Shin et al., Fig. 1(a), MNIST 3-layer MLP, 0.06M-5.4M parameters"


def shin_mlp_slope() -> float:
    """The panel's gain per doubling of the parameters, by our trend rule (least squares on
    log2 parameters)."""
    x = np.log2(np.array(list(SHIN_MLP_PANEL), dtype=float))
    return float(np.polyfit(x, np.array(list(SHIN_MLP_PANEL.values())), 1)[0])


def shin_mlp_widest() -> float:
    """The panel's gain at its largest model."""
    return SHIN_MLP_PANEL[max(SHIN_MLP_PANEL)]


# ----------------------------------------------------------------------------- citations
# How a claim's source is cited: each study names its source in words ("Shin et al. Sec. 3",
# "blog (seed 000), ..."); the book cites the entry of book/references.bib that the words name.
# Each pattern is the phrase naming one entry: an author's name (with the year where the study
# writes one; the citation shows the .bib's year) is replaced by the citation; the name of a
# benchmark or post (``KEEP``) stays, the citation after it. A source that names no entry is an
# error (the book promises a citation per claim).
_YEAR = r"(?:,? \(?(?:19|20)\d\d\)?)?"
CITATIONS = (
    (r"Shin et al\." + _YEAR, "shin2025critical"),
    (r"Foret et al\." + _YEAR, "foret2021sam"),
    (r"Kwon et al\." + _YEAR, "kwon2021asam"),
    (r"Liu et al\.(?:,? CVPR)?" + _YEAR, "liu2022looksam"),
    (r"Becker et al\." + _YEAR, "becker2024msam"),
    (r"Andriushchenko (?:and|&) Flammarion" + _YEAR, "andriushchenko2022understanding"),
    (r"Dahl et al\." + _YEAR, "dahl2023algoperf"),
    (r"Schmidt et al\." + _YEAR, "schmidt2021crowded"),
    (r"AlgoPerf[^;:()]*", "dahl2023algoperf"),
    (r"the BatchNorm (?:blog )?post(?: \(seed 001\))?", "blog_sam_batchnorm"),
    (r"(?:the )?blog(?: post)?(?: \(seed 000\))?", "blog_sam_fmnist"),
)
KEEP = {r"AlgoPerf[^;:()]*"}   # names kept in the text (to the clause's end), cited after


def _pattern():
    import re
    return re.compile("|".join(f"(?P<c{i}>\\b{p})" for i, (p, _) in enumerate(CITATIONS)),
                      re.IGNORECASE)


def cite_keys(source: str) -> list[str]:
    """The book/references.bib keys a claim's source names, in order of appearance. Raises
    ValueError when it names none (add its phrase to CITATIONS and its entry to the .bib)."""
    keys = []
    for m in _pattern().finditer(source or ""):
        key = CITATIONS[int(m.lastgroup[1:])][1]
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ValueError(f"source {source!r} names no entry of book/references.bib "
                         "(samkit.analysis.sources.CITATIONS)")
    return keys


def cite(source: str) -> str:
    """The source as the book shows it (MyST): each phrase naming a reference replaced by its
    author-year citation ({cite:t}, linked to the References page), the locator kept:
    "Shin et al. Sec. 3" -> "{cite:t}`shin2025critical`, Sec. 3"."""
    cite_keys(source)  # raises if it names nothing
    pat = _pattern()

    def one(m):
        pattern, key = CITATIONS[int(m.lastgroup[1:])]
        if pattern in KEEP:
            return f"{m.group(0).rstrip()} {{cite:p}}`{key}`"
        rest = source[m.end():]
        sep = "," if rest[:1].isalnum() or rest.startswith((" Sec", " App", " Fig", " Table")) \
            else ""
        return f"{{cite:t}}`{key}`{sep}"

    out = pat.sub(one, source)
    return " ".join(out.split())
