"""samkit.analysis.claims: a claim's verdict and how it is shown."""
import numpy as np

from samkit.analysis import stats
from samkit.analysis.claims import Claim


def test_ratio_claims_read_against_one():
    c = Claim("x", "SAM is flatter", "paper", stats.Effect(np.log(0.5), np.log(0.4),
                                                           np.log(0.6), 6, 0.1),
              np.log(1.1), "10%", direction=-1, unit="ratio")
    assert c.verdict == "supports" and "below 1" in c.explained and c.shown.startswith("0.50×")
