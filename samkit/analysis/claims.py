"""A claim a source makes, as a study tests it: its words, its source, the measured effect, the
smallest effect of interest δ and the verdict (``stats.verdict``); and ``Analysis``, what a
study's ``analyze(runs)`` returns (tables, claims and the numbers its prose quotes)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from samkit.analysis import fmt, stats


@dataclass(frozen=True)
class SourceEffect:
    """The source's own size of a claimed effect (read off its figure or table), in the
    claim's unit (a fraction for pp, a log ratio for ratios), with where it comes from."""
    value: float
    where: str


@dataclass
class Claim:
    """A tested claim: its words, its source, the measured effect and the verdict against δ.

    ``unit``: "pp" (a difference of accuracies), "pp/doubling" (a width-trend slope) or
    "ratio" (``effect`` is a difference of logs; shown as a ratio). ``source_effect``: the
    source's own estimate of the effect, where it quantifies one. ``robustness`` is filled in
    by ``robustness.check`` (leave-one-seed-out and the retrain check)."""
    id: str
    text: str
    source: str
    effect: stats.Effect
    delta: float
    delta_reason: str
    direction: int = 1
    unit: str = "pp"
    source_effect: SourceEffect | None = None
    robustness: dict | None = None
    # False: the claim stays off `dvc exp show` (a terminal holds a few columns per study);
    # it is on its page, the front page and metrics.json all the same.
    dvc_metric: bool = True

    @property
    def verdict(self) -> str:
        return stats.verdict(self.effect, self.delta, self.direction)

    @property
    def p_value(self) -> float:
        return stats.decision_p(self.effect, self.delta)

    @property
    def seeds_needed(self) -> int | None:
        if self.verdict != "cannot tell":
            return None
        return stats.seeds_needed(self.effect, self.delta)

    def _show(self, est, low=None, high=None) -> str:
        if self.unit == "ratio":
            return fmt.ratio(est, low, high)
        s = fmt.pp(est, low, high)
        return s.replace(" pp", " pp per doubling", 1) if self.unit == "pp/doubling" else s

    @property
    def shown(self) -> str:
        e = self.effect
        return self._show(e.estimate, e.low, e.high)

    @property
    def delta_shown(self) -> str:
        if self.unit == "ratio":
            return f"×{math.exp(self.delta):.2f}"
        return f"{100 * self.delta:.2f} pp"

    @property
    def source_shown(self) -> str:
        """The source's own effect, whether our 95% CI holds it, and whether it is below δ."""
        s = self.source_effect
        if s is None:
            return ""
        v = s.value
        held = self.effect.low <= v <= self.effect.high
        small = abs(v) < self.delta
        return (f"{self._show(v)} ({s.where}); our CI {'holds' if held else 'excludes'} it"
                + ("; the source's own effect is below δ, so this scale cannot resolve it"
                   if small else ""))

    def metrics(self) -> dict:
        """What metrics.json (and `dvc exp show`) records of this claim."""
        e = self.effect
        s = self.source_effect
        return {"text": self.text, "source": self.source, "unit": self.unit,
                "estimate": e.estimate, "ci_low": e.low, "ci_high": e.high, "n": e.n,
                "delta": self.delta, "delta_reason": self.delta_reason,
                "direction": self.direction, "verdict": self.verdict,
                "p_value": self.p_value, "seeds_needed": self.seeds_needed,
                "shown": self.shown, "delta_shown": self.delta_shown,
                "explained": self.explained,
                "source_effect": None if s is None else s.value,
                "source_where": None if s is None else s.where,
                "source_shown": self.source_shown,
                "robustness": self.robustness, "dvc_metric": self.dvc_metric}

    @property
    def explained(self) -> str:
        """The verdict with its reason, for prose and tables (ratios are read against 1)."""
        v, side = self.verdict, "above" if self.direction > 0 else "below"
        zero = "1 (no change)" if self.unit == "ratio" else "0"
        band = (f"×1/{math.exp(self.delta):.2f} to {self.delta_shown}" if self.unit == "ratio"
                else f"±{self.delta_shown}")
        small = (" The source's own effect is also below δ: it cannot be resolved at this scale."
                 if self.source_effect is not None and abs(self.source_effect.value) < self.delta
                 else "")
        if v == "supports":
            return f"supports: the 95% CI lies {side} {zero}" + small
        if v == "below δ":
            return (f"below δ: the 95% CI lies {side} {zero} but inside {band}: real, too "
                    "small to matter at this resolution" + small)
        if v == "contradicts":
            inside = (self.effect.low > -self.delta and self.effect.high < self.delta)
            return (f"contradicts: the 95% CI lies inside {band} (no effect worth having at "
                    "this scale)" if inside else
                    f"contradicts: the 95% CI lies on the other side of {zero}") + small
        n = self.seeds_needed
        if self.effect.n < 2:
            return "cannot tell: fewer than 2 finished seed pairs"
        more = (f"about {n} seeds would give 80% power to detect δ" if n and n <= stats.MAX_SEEDS
                else "no feasible number of seeds would decide it")
        return f"cannot tell: the 95% CI spans {zero} and reaches beyond {band}; {more}" + small


@dataclass
class Analysis:
    tables: dict[str, pd.DataFrame]
    claims: list[Claim]
    facts: dict = field(default_factory=dict)   # other numbers the page's prose quotes

    def metrics(self) -> dict:
        return {"claims": {c.id: c.metrics() for c in self.claims}, "facts": self.facts}

    def claim(self, claim_id: str) -> Claim:
        for c in self.claims:
            if c.id == claim_id:
                return c
        raise KeyError(f"no claim {claim_id!r}; has: {', '.join(c.id for c in self.claims)}")
