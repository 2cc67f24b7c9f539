"""samkit.analysis.sources: every claim's source cites a reference of the book's bibliography."""
import glob
import json
import os
import re

import pytest

from samkit.analysis import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_claim_source_in_the_committed_results_cites_a_reference():
    with open(os.path.join(REPO, "book", "references.bib")) as f:
        keys = set(re.findall(r"^@\w+\{([^,]+),", f.read(), re.M))
    seen = 0
    for path in glob.glob(os.path.join(REPO, "results", "*", "*", "metrics.json")):
        with open(path) as f:
            for c in json.load(f)["metrics"].get("claims", {}).values():
                cited = sources.cite_keys(c["source"])
                assert cited and set(cited) <= keys, (path, c["source"])
                seen += 1
    assert seen >= 40


def test_cite_replaces_the_named_source_and_keeps_the_locator():
    assert sources.cite("Shin et al. Sec. 3") == "{cite:t}`shin2025critical`, Sec. 3"
    assert sources.cite("Shin et al. App. E.4; Foret et al. (two passes per step)") == (
        "{cite:t}`shin2025critical`, App. E.4; {cite:t}`foret2021sam` (two passes per step)")
    assert sources.cite("blog (seed 000), Fashion-MNIST PreActResNet18 table") == (
        "{cite:t}`blog_sam_fmnist`, Fashion-MNIST PreActResNet18 table")
    assert sources.cite_keys("the BatchNorm post (seed 001): drift") == ["blog_sam_batchnorm"]
    assert sources.cite("Becker et al. 2023 (Momentum-SAM)") == \
        "{cite:t}`becker2024msam` (Momentum-SAM)"                # the .bib's year, once
    assert sources.cite("Kwon et al. 2021: ASAM improves on SAM") == \
        "{cite:t}`kwon2021asam`: ASAM improves on SAM"
    assert sources.cite("Foret et al. 2021 (tuned baselines); AlgoPerf's equal-budget rule") == (
        "{cite:t}`foret2021sam` (tuned baselines); AlgoPerf's equal-budget rule "
        "{cite:p}`dahl2023algoperf`")
    with pytest.raises(ValueError, match="names no entry"):
        sources.cite_keys("a source nobody wrote down")
