"""benchmarks/: the scripts' JSON output is well formed, and their baselines are correct.

Speed is never asserted here (it depends on the machine and its load); only that the scripts run,
write what they say, that the reference SAM step_time.py times against is the same algorithm as
samkit's, that trainer_vs_bare.py's bare loop does the trainer's steps, and that workers.py's
comparison of two sweeps' results does see a difference.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "step_time.py"
TRAINER_VS_BARE = REPO / "benchmarks" / "trainer_vs_bare.py"
WORKERS = REPO / "benchmarks" / "workers.py"
PROVENANCE_KEYS = ("commit", "device", "device_slug", "torch", "python", "date", "argv")


def _load(script=SCRIPT):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


st = _load()


# --------------------------------------------------------------------------- the shared modules

def test_scripts_import_only_public_names_of_the_shared_modules():
    """Shared code lives in benchmarks/common.py and benchmarks/reference_sam.py; no script
    reaches into another script or takes a private name."""
    import ast
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
                assert {a.name for a in node.names} <= {"common", "reference_sam"}, path
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks"):
                assert node.module in ("benchmarks.common", "benchmarks.reference_sam"), path
                assert not any(a.name.startswith("_") for a in node.names), (path, node.module)
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("step_time", "trainer_vs_bare", "workers"), path


def test_reference_sam_has_its_own_module():
    from benchmarks import reference_sam
    assert st.ReferenceSAM is reference_sam.ReferenceSAM
    assert "class ReferenceSAM" not in SCRIPT.read_text()


def test_common_helpers():
    from benchmarks import common
    assert common.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert common.parse_model("preact18-64") == ("preact18", 64)
    assert common.parse_model("preact18-0") is None and common.parse_model("resnet-8") is None
    assert common.split_values(["a,b", "c"]) == ["a", "b", "c"]
    # quartiles as statistics.quantiles' default ("exclusive") method gives them for 1..8
    t = common.summary([8, 1, 7, 2, 6, 3, 5, 4], scale=10)
    assert (t["min"], t["q1"], t["median"], t["q3"], t["n"]) == (10, 22.5, 45, 67.5, 8)
    assert common.summary([0.5])["q1"] == common.summary([0.5])["q3"] == 0.5
    assert not common.cpu_clock_allowed("cpu", "cuda", 1)
    assert not common.cpu_clock_allowed("cpu", "cpu", 2)
    assert common.cpu_clock_allowed("cpu", "cpu", 1) and common.cpu_clock_allowed("wall", "cuda", 8)
    with pytest.raises(ValueError):
        common.timer("gpu")


def _run_quick(script, out, *extra):
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return _run_quick(SCRIPT, tmp_path_factory.mktemp("bench") / "step_time.json", "--device",
                      "cpu")


def test_quick_run_writes_the_documented_schema(quick_run):
    data, stdout = quick_run
    assert data["schema"] == st.SCHEMA
    prov = data["provenance"]
    for key in ("commit", "device", "device_slug", "torch", "python", "threads", "date"):
        assert prov[key] not in (None, ""), key
    assert prov["torch"] == torch.__version__
    assert prov["threads"] == 1  # --quick pins one thread
    settings = data["settings"]
    assert settings["quick"] is True and settings["variants"] == list(st.VARIANTS)
    steps = settings["steps"]
    assert [(r["model"], r["batch"], r["mode"]) for r in data["results"]] == [
        (m, b, mode) for mode in st.QUICK["modes"] for m in st.QUICK["models"]
        for b in st.QUICK["batches"]]
    for r in data["results"]:
        assert "error" not in r, r.get("error")
        assert r["finite"] is True and r["params"] > 0
        for v in st.VARIANTS:
            t = r[v]
            assert t["n"] == steps == len(t["samples_ms"])
            assert all(s > 0 for s in t["samples_ms"])
            assert t["min_ms"] <= t["q1_ms"] <= t["median_ms"] <= t["q3_ms"]
            assert math.isclose(t["median_ms"], sorted(t["samples_ms"])[steps // 2]
                                if steps % 2 else sum(sorted(t["samples_ms"])
                                                      [steps // 2 - 1:steps // 2 + 1]) / 2)
            assert math.isclose(t["img_per_s"], r["batch"] / (t["median_ms"] / 1e3))
        # The ratios are computed from the recorded medians.
        assert math.isclose(r["ratio_sam_sgd"], r["sam"]["median_ms"] / r["sgd"]["median_ms"])
        assert math.isclose(r["ratio_ref_sam_sgd"],
                            r["ref_sam"]["median_ms"] / r["sgd"]["median_ms"])
        assert math.isclose(r["speedup_sam_vs_ref"],
                            r["ref_sam"]["median_ms"] / r["sam"]["median_ms"])
        assert r["model"] in stdout  # the table is printed
    assert "SAM/SGD" in stdout


def test_json_is_written_atomically(tmp_path):
    """The benchmark writes through samkit.atomic (temp file, fsync, rename)."""
    from samkit.atomic import write_json
    assert st.write_json is write_json
    path = tmp_path / "sub" / "x.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left


@pytest.mark.parametrize("argv, needle", [
    (["--models", "resnet-8"], "'resnet-8'"),
    (["--models", "mlp-1024,preact18-0"], "'preact18-0'"),
    (["--batches", "128", "x"], "'x'"),
    (["--modes", "fp16"], "'fp16'"),
    (["--steps", "0"], "--steps: bad value 0"),
    (["--device", "tpu"], "'tpu'"),
])
def test_bad_arguments_give_one_clear_error(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        st.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "allowed" in err


def test_graph_mode_is_refused_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: graph mode is allowed")
    with pytest.raises(SystemExit):
        st.parse_args(["--modes", "graph"])
    assert "needs CUDA" in capsys.readouterr().err


def test_cpu_default_plan():
    args = st.parse_args(["--device", "cpu"])
    assert args.plan == [("mlp-1024", 128, "fp32"), ("preact18-8", 128, "fp32"),
                         ("preact18-16", 128, "fp32"), ("mlp-1024", 512, "fp32")]
    assert args.steps >= 20
    args = st.parse_args(["--device", "cpu", "--models", "mlp-8", "--batches", "4,16"])
    assert args.plan == [("mlp-8", 4, "fp32"), ("mlp-8", 16, "fp32")]


@pytest.mark.parametrize("spec", ["mlp-16", "preact18-2"])
def test_reference_sam_matches_samkit_sam_in_float64(spec):
    """The baseline is a fair, correct SAM: after two steps (momentum included) its weights and
    BN running statistics equal samkit's, in float64."""
    torch.manual_seed(0)
    base = st.build_model(spec).double()
    x = torch.randn(6, *st.IN_SHAPE, dtype=torch.float64)
    y = torch.randint(0, st.NUM_CLASSES, (6,))
    models = {v: copy.deepcopy(base) for v in ("sam", "ref_sam", "sgd")}
    for v, m in models.items():
        step = st.make_step(v, m, x, y, "fp32")
        for _ in range(2):
            step()
    sam, ref, sgd = (models[v].state_dict() for v in ("sam", "ref_sam", "sgd"))
    moved = False
    for k, w in sam.items():
        if k.endswith("num_batches_tracked"):  # momentum 0 still counts the 2nd pass
            continue
        torch.testing.assert_close(ref[k], w, rtol=0, atol=1e-12, msg=k)
        moved |= not torch.allclose(w, sgd[k], rtol=0, atol=1e-9)
    assert moved, "SAM and SGD gave the same weights: the SAM steps did nothing"


# --------------------------------------------------------------------------- trainer_vs_bare.py

def test_trainer_vs_bare_quick_run_writes_its_schema(tmp_path):
    data, stdout = _run_quick(TRAINER_VS_BARE, tmp_path / "tvb.json", "--device", "cpu",
                              "--clock", "cpu")
    tvb = _load(TRAINER_VS_BARE)
    assert data["schema"] == tvb.SCHEMA
    for key in PROVENANCE_KEYS + ("threads", "loadavg_before", "wall_s"):
        assert data["provenance"][key] not in (None, ""), key
    assert data["provenance"]["threads"] == 1
    settings = data["settings"]
    assert settings["quick"] is True and settings["clock"] == "cpu"
    reps = settings["reps"]
    assert [(r["model"], r["width"], r["depth"], r["optimizer"]) for r in data["results"]] == [
        ("mlp", 16, 2, "sgd"), ("mlp", 16, 2, "sam")]  # the research base's depth 2
    for r in data["results"]:
        # The bare loop took exactly the trainer's steps (SAM: the same two passes).
        assert r["same_weights"] is True
        assert r["batch"] == 128 and r["n_train"] == tvb.QUICK["n_train"]
        for c in tvb.CONTENDERS:
            t = r[c]
            assert t["n"] == reps == len(t["samples_s"]) and all(s > 0 for s in t["samples_s"])
            assert math.isclose(t["median_s"], sorted(t["samples_s"])[reps // 2])
            assert math.isclose(t["img_per_s"], r["n_train"] / t["median_s"])
        assert math.isclose(r["ratio"], r["trainer"]["img_per_s"] / r["bare"]["img_per_s"])
    assert "trainer/bare" in stdout


def test_trainer_vs_bare_cpu_clock_needs_one_thread(capsys):
    tvb = _load(TRAINER_VS_BARE)
    with pytest.raises(SystemExit):
        tvb.parse_args(["--device", "cpu", "--clock", "cpu", "--threads", "2"])
    assert "--threads 1" in capsys.readouterr().err
    assert tvb.parse_args(["--device", "cpu"]).models == ["mlp-512", "mlp-128"]


# --------------------------------------------------------------------------- workers.py

@pytest.mark.slow
def test_workers_quick_run_writes_its_schema(tmp_path):
    data, stdout = _run_quick(WORKERS, tmp_path / "workers.json")
    wk = _load(WORKERS)
    assert data["schema"] == wk.SCHEMA
    for key in PROVENANCE_KEYS + ("loadavg_before", "wall_s"):
        assert data["provenance"][key] not in (None, ""), key
    assert data["settings"]["order"] == [1, 2] and len(data["settings"]["runs"]) == 4
    assert [s["workers"] for s in data["sweeps"]] == [1, 2]
    assert all(s["wall_s"] > 0 and s["differences"] == [] for s in data["sweeps"])
    assert data["bit_identical"] is True
    med = data["median_wall_s"]
    assert math.isclose(data["speedup"], med["1"] / med["2"])
    assert "speed-up" in stdout


def test_workers_comparison_sees_one_ulp_and_ignores_times(tmp_path):
    """Two sweeps' stored results, written as the sweep writes them (JSON files): a change of
    one ulp in one metric is reported; different times and provenance are not."""
    wk = _load(WORKERS)
    result = {"config": {"width": 8}, "status": "ok", "final": {"test_acc": 0.5},
              "history": [{"epoch": 1, "train_loss": 0.1, "val_loss": float("nan")}],
              "seconds": 1.0, "train_seconds": 0.5, "provenance": {"date": "today"}}
    same = {**result, "seconds": 2.0, "train_seconds": 0.7, "provenance": {"date": "later"}}
    planted = copy.deepcopy(result)
    planted["history"][0]["train_loss"] = math.nextafter(0.1, 1.0)
    for name, r in (("a", result), ("b", same), ("c", planted)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "k.json").write_text(json.dumps(r))
    a, b, c = (wk.load_runs(tmp_path / n, ["k"]) for n in "abc")
    assert wk.differences(a, b) == []  # NaN equals NaN, times and provenance are ignored
    assert wk.differences(a, c) == ["k: history"]
    assert wk.differences(a, {}) == ["k: missing"]
