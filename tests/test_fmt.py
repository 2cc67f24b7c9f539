"""samkit.analysis.fmt: the claims table (labels, verdicts, robustness) and the effect table's
column names and units."""
import pandas as pd

from conftest import FRAGILE, ROBUST, claim
from samkit.analysis import fmt


def test_claims_table_rows_labels_verdicts_and_robustness():
    rows = [claim(0.0018, 0.0, 0.0037, "supports", FRAGILE, text="SAM beats SGD at the widest "
                  "mlp (width 2048)"),
            claim(0.0004, -0.001, 0.002, "contradicts", None, unit="pp/doubling",
                  text="ρ* grows (shown: the factor per doubling) | oddly"),
            {**claim(0.01, 0.005, 0.015, "supports"), "source_effect": 0.0019}]
    md = fmt.claims_table(rows)
    head, first, second, third = md.split("\n* - ")[1:]
    assert head.startswith("claim\n") and md.startswith(":::{list-table}")
    assert "SAM beats SGD at the widest MLP (width 2048)" in first
    assert "no: flips if seed 1 or 4 is dropped or if runs are retrained" in first
    assert "(shown:" not in second and "\\|" in second       # aside dropped, pipe escaped
    assert "not checked" in second and "(δ 0.30 pp per doubling)" in second
    assert "its own effect: +0.19 pp; our CI excludes it" in third
    assert "its own effect" not in first + second
    assert fmt.robust_short(ROBUST) == "yes"
    many = {"fragile": True, "leave_one_out": "; ".join(f"without seed {i}: cannot tell"
                                                        for i in range(5)), "retrain": "holds"}
    assert fmt.robust_short(many) == "no: flips if any of 5 seeds is dropped"


def test_effect_table_names_the_unit_of_every_measured_column():
    t = pd.DataFrame([{"width": 32.0, "params": 26506.0, "estimate": 0.0012, "low": -0.001,
                       "high": 0.0034, "n": 6, "diverged": 0, "unfit": 0,
                       "treatment": 0.85, "control": 0.8488}])
    df = fmt.effect_table(t, ["width", "params"]).data
    assert list(df.columns) == ["width (neurons per layer)", "parameters",
                                "SAM − SGD (pp) [95% CI]", "SAM acc (%)", "SGD acc (%)",
                                "seed pairs"]
    assert df.iloc[0].tolist() == ["32", "26,506", "+0.12 [-0.10,\u00a0+0.34]", "85.00", "84.88",
                                   6]
    ratio = fmt.effect_table(t.assign(diverged=1), ["width"], ratio_=True).data
    assert "SAM / SGD (×) [95% CI]" in ratio and "diverged pairs" in ratio
