"""samkit.pipeline.results: the line `make repro` ends with (runs replayed, trained, missing)."""
import os

import yaml

from conftest import TOY_SIMPLICITY_TWO_SEEDS as PARAMS
from samkit.pipeline import params as params_mod, results
from samkit.sweep import store

STUDY = "simplicity"


def test_the_repro_line_counts_replayed_and_trained_runs(tmp_path):
    """Runs in the cache before the stamp were replayed, newer ones trained, absent missing;
    only the runs of the studies dvc.yaml publishes count."""
    spec = yaml.safe_load(PARAMS)
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "dvc.yaml").write_text(f"vars:\n  - studies: [{STUDY}]\n")
    keys = sorted({store.run_key(c) for c in
                   params_mod.study_configs(STUDY, spec[STUDY], "quick")})
    assert len(keys) == 8
    cache = tmp_path / "runs"
    cache.mkdir()
    for key in keys[:5]:
        (cache / f"{key}.json").write_text("{}")
        os.utime(cache / f"{key}.json", (1_000_000, 1_000_000))
    stamp = tmp_path / "stamp"
    stamp.write_text("")
    os.utime(stamp, (2_000_000, 2_000_000))
    for key in keys[5:7]:
        (cache / f"{key}.json").write_text("{}")   # written now: after the stamp
    line = results.repro_line(str(stamp), str(tmp_path / "params.yaml"),
                              str(tmp_path / "dvc.yaml"), str(cache))
    assert line.startswith(f"5 runs replayed from the run cache ({cache}/), 2 trained, "
                           "1 missing (profile quick).")
    assert line.endswith("To retrain every run into a fresh cache (hours): make retrain")
