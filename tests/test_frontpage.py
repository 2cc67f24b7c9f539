"""The front page's computed advice from the frontier study's saved facts."""
from samkit.pipeline import frontpage


def meta(cheapest: dict) -> dict:
    facts = {"cells": ", ".join(cheapest), "delta_shown": "0.30 pp"}
    for cell, method in cheapest.items():
        width = 32 if cell.startswith("narrow") else 512
        noise = "0%" if cell.endswith("clean") else "40%"
        facts[cell] = {"cheapest_method": method, "width": width, "noise": noise}
    return {"metrics": {"facts": facts}}


def test_one_method_everywhere_gives_one_recommendation():
    lines = frontpage.equal_compute(meta({"narrow_clean": "SGD 1×", "wide_noisy": "SGD 1×"}))
    assert lines == ["At equal compute, use SGD 1×: in every setting tested (width 32 with 0% "
                     "label noise; width 512 with 40% label noise) it is the cheapest method "
                     "within 0.30 pp of the best mean test accuracy, counting gradient "
                     "evaluations (how sure each pick is: the frontier page)."]


def test_methods_that_differ_by_setting_are_each_named_with_their_settings():
    line, = frontpage.equal_compute(meta({"narrow_clean": "SGD 1×", "wide_clean": "SGD 1×",
                                          "wide_noisy": "SAM every 5"}))
    assert line.startswith("At equal compute, use SGD 1× at width 32 with 0% label noise and "
                           "at width 512 with 0% label noise; SAM every 5 at width 512 with "
                           "40% label noise: in each setting")


def test_no_frontier_results_no_line():
    assert frontpage.equal_compute(None) == []


def test_cells_without_a_finished_run_are_left_out():
    line, = frontpage.equal_compute(meta({"narrow_clean": "SGD 1×", "wide_noisy": "n/a"}))
    assert "n/a" not in line and "width 512" not in line
    assert frontpage.equal_compute(meta({"wide_noisy": "n/a"})) == []
    assert frontpage.equal_compute(meta({})) == []  # no cells at all
