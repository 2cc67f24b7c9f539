"""`pip install samkit` is torch and numpy; the study machinery is an extra.

- pyproject.toml: the core dependencies are exactly torch and numpy, the extras exist, and
  every third-party module that samkit/ imports is declared in one of them;
- ``import samkit`` imports nothing heavy until a name is used; ``samkit --help`` answers in
  under a second (it imports no torch);
- the repository commands (validate, sweep, stage, cache) say in one line, exit 2, when they
  run outside a checkout, and touch nothing there;
- a core install, made from this environment's own distributions (the closure of the core
  requirements, linked into a fresh venv, samkit linked in as installed): it lacks every
  study dependency, and there SAM steps like the reference, `samkit train` gives the numbers
  of the full install, and the repository commands name the extra they need.
"""
import ast
import json
import os
import re
import statistics
import subprocess
import sys
import time
import tomllib
import venv
from importlib import metadata
from pathlib import Path

import pytest
from conftest import TOY_SIMPLICITY_PARAMS

REPO = Path(__file__).resolve().parents[1]
# Imported by the study machinery, never by `import samkit` or its optimizer and models.
STUDY_MODULES = ("pandas", "scipy", "yaml", "statsmodels", "tqdm", "matplotlib", "seaborn",
                 "papermill", "nbformat", "submitit", "torchvision", "IPython")
STUDY_DISTS = {"pandas", "scipy", "pyyaml", "statsmodels", "tqdm", "matplotlib", "seaborn",
               "papermill", "nbformat", "submitit", "torchvision", "ipython", "jupyter-book",
               "dvc", "ipykernel"}
TINY_TRAIN = ["train", "--dataset", "synthetic", "--model", "mlp", "--width", "8",
              "--n-train", "64", "--epochs", "2", "--optimizer", "sam", "--device", "cpu"]
HELP_BOUND_S = 1.0
PARAMS = TOY_SIMPLICITY_PARAMS


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _canon(re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1))


def _project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _extra(project, name, seen=()) -> set[str]:
    """The distributions an extra declares, its samkit[...] references expanded."""
    out = set()
    for req in project["optional-dependencies"][name]:
        m = re.match(r"\s*samkit\[([^\]]+)\]", req)
        if m:
            for sub in m.group(1).split(","):
                if sub.strip() not in seen:
                    out |= _extra(project, sub.strip(), (*seen, name))
        else:
            out.add(_req_name(req))
    return out


# ---------------------------------------------------------------------------- pyproject.toml

def test_core_dependencies_are_torch_and_numpy_and_the_rest_are_extras():
    project = _project()
    assert {_req_name(r) for r in project["dependencies"]} == {"torch", "numpy"}
    extras = project["optional-dependencies"]
    assert {"study", "book", "cluster", "dev"} <= set(extras)
    study = _extra(project, "study")
    assert {"pandas", "scipy", "pyyaml", "tqdm", "filelock", "statsmodels"} <= study
    assert study <= _extra(project, "book") and study <= _extra(project, "cluster")
    assert {"papermill", "jupyter-book", "seaborn"} <= _extra(project, "book")
    assert "submitit" in _extra(project, "cluster")
    assert {"pytest", "submitit", "papermill"} <= _extra(project, "dev")


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level module: files of samkit/ that import it} for modules outside the stdlib."""
    found = {}
    for path in sorted((REPO / "samkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "samkit":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_module_samkit_imports_is_declared():
    project = _project()
    declared = {_req_name(r) for r in project["dependencies"]}
    for name in project["optional-dependencies"]:
        declared |= _extra(project, name)
    owners = metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"torch", "numpy", "pandas", "yaml"} <= set(imports)   # the scan sees them
    undeclared = {mod: sorted(files) for mod, files in imports.items()
                  if not {_canon(d) for d in owners.get(mod, [mod])} & declared}
    assert not undeclared, f"imported by samkit/ but in no dependency list: {undeclared}"


# ------------------------------------------------------------------------- import and --help

def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def test_import_samkit_loads_nothing_heavy_until_a_name_is_used():
    code = ("import sys, json, samkit\n"
            "a = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'numpy', *S})\n"
            "opt = samkit.SAM\n"
            "b = sorted({m.split('.')[0] for m in sys.modules} & set(S))\n"
            "print(json.dumps([a, b, opt.__module__, 'torch' in sys.modules]))")
    r = _run([sys.executable, "-c", f"S = {STUDY_MODULES!r}\n" + code], cwd=REPO)
    assert r.returncode == 0, r.stderr
    on_import, after_use, module, torch_loaded = json.loads(r.stdout)
    assert on_import == []                    # not even torch: `import samkit` is instant
    assert module == "samkit.optim.sam" and torch_loaded
    # torch.hub imports tqdm where it is installed: that is torch's, not samkit's
    assert [m for m in after_use if m != "tqdm"] == []


def test_help_answers_in_under_a_second_and_imports_no_torch():
    cmd = [sys.executable, "-m", "samkit", "--help"]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = _run(cmd, cwd=REPO)
        times.append(time.perf_counter() - t0)
        assert r.returncode == 0, r.stderr
    for command in ("train", "validate", "sweep", "stage", "cache"):
        assert command in r.stdout
    assert statistics.median(times) < HELP_BOUND_S, f"samkit --help took {times} s"
    r = _run([sys.executable, "-X", "importtime", "-m", "samkit", "--help"], cwd=REPO)
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in imported                          # the trace is there
    assert not imported & {"torch", "numpy", *STUDY_MODULES}, imported


def test_repository_commands_say_so_outside_a_checkout(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cases = {("validate",): "pass a params file", ("sweep",): "pass --params FILE",
             ("stage", "rho"): "", ("cache", "verify"): "pass --cache DIR"}
    for args, hint in cases.items():
        r = _run([sys.executable, "-m", "samkit", *args], cwd=outside)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout, r.stderr)
        assert len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith(f"error: samkit {args[0]}: not in a samkit repository "
                                   f"checkout (no ")
        assert str(outside) in lines[0] and hint in lines[0], lines[0]
    assert list(outside.iterdir()) == []   # nothing made there (no backups, no temp files)
    # Not over-eager: a params file passed explicitly is validated from anywhere.
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    r = _run([sys.executable, "-m", "samkit", "validate", str(params)], cwd=outside)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{params}: ok", r.stdout
    assert lines[1].startswith("profile quick: 2 runs, 2 not in the run cache results/runs"), \
        r.stdout
    # ... but a stage runs a notebook of the checkout: with a params file of its own, still
    # refused outside one (after the budget check), nothing touched.
    r = _run([sys.executable, "-m", "samkit", "stage", "simplicity", "--params", str(params),
              "--yes"], cwd=outside)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"error: samkit stage: not in a samkit repository checkout (no dvc.yaml, notebooks/ in "
        f"{outside}); run it at the root of a clone of the samkit repository (`samkit train` "
        "runs anywhere)"], r.stderr
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------- a core install

def _closure(requirements) -> dict[str, metadata.Distribution]:
    """The installed distributions that pip would install for ``requirements``: each one's
    requirements followed, markers evaluated here (with the extras asked for)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    todo = [Requirement(r) for r in requirements]
    dists, extras = {}, {}
    while todo:
        req = todo.pop()
        name = _canon(req.name)
        wanted = set(req.extras)
        if name in dists and wanted <= extras[name]:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue   # not installed here, so not needed by this install either
        dists[name] = dist
        extras[name] = extras.get(name, set()) | wanted
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in extras[name] | {""}):
                todo.append(sub)
    return dists


@pytest.fixture(scope="module")
def core_env(tmp_path_factory):
    """A venv holding what `pip install samkit` installs: the closure of the core
    requirements (links into this environment) and samkit (a link to this checkout)."""
    root = tmp_path_factory.mktemp("core-venv")
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                     ).stdout.strip())
    dists = _closure(_project()["dependencies"])
    for dist in dists.values():
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops - {"..", "__pycache__"}:
            src, dst = Path(dist.locate_file(top)), site / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    (site / "samkit").symlink_to(REPO / "samkit")
    script = root / "bin" / "samkit"   # the console script pip writes for [project.scripts]
    script.write_text(f"#!{python}\nimport sys\nfrom samkit.__main__ import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return {"python": str(python), "samkit": str(script), "env": env, "dists": set(dists)}


@pytest.mark.slow
def test_the_core_install_holds_torch_and_numpy_and_no_study_dependency(core_env):
    assert {"torch", "numpy"} <= core_env["dists"]
    assert not core_env["dists"] & STUDY_DISTS, core_env["dists"] & STUDY_DISTS
    code = ("import importlib.util as u, json, samkit\n"
            f"print(json.dumps([[m for m in {STUDY_MODULES!r} if u.find_spec(m)], "
            "u.find_spec('torch') is not None, samkit.__file__]))")
    r = _run([core_env["python"], "-c", code], env=core_env["env"], cwd="/")
    assert r.returncode == 0, r.stderr
    findable, torch_found, where = json.loads(r.stdout)
    assert findable == [] and torch_found
    assert Path(where).resolve() == REPO / "samkit" / "__init__.py"


SAM_REFERENCE = r'''
import json, sys
import samkit
loaded_on_import = "torch" in sys.modules
import torch
torch.manual_seed(0)
model = torch.nn.Linear(3, 2)
x, y = torch.randn(8, 3), torch.randn(8, 2)
w0 = [p.detach().clone() for p in model.parameters()]
rho, lr = 0.05, 0.1

def loss(w, b):
    return ((x @ w.T + b - y) ** 2).mean()

opt = samkit.SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
loss(*model.parameters()).backward()
opt.first_step(zero_grad=True)
loss(*model.parameters()).backward()
opt.second_step(zero_grad=True)
# the reference: SAM's update by hand, w - lr * grad L(w + rho * g / ||g||)
ws = [w.clone().requires_grad_() for w in w0]
g = torch.autograd.grad(loss(*ws), ws)
norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
we = [w + rho * gi / norm for w, gi in zip(ws, g)]
g2 = torch.autograd.grad(loss(*we), we)
ref = [w - lr * gi for w, gi in zip(w0, g2)]
err = max((p.detach() - r).abs().max().item() for p, r in zip(model.parameters(), ref))
moved = max((p.detach() - w).abs().max().item() for p, w in zip(model.parameters(), w0))
print(json.dumps([loaded_on_import, err, moved]))
'''


@pytest.mark.slow
def test_sam_and_samkit_train_work_on_the_core_install(core_env, tmp_path):
    env = core_env["env"]
    procs = {
        "sam": subprocess.Popen([core_env["python"], "-c", SAM_REFERENCE], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True),
        # no --quiet: the progress bar is tqdm's, which the core install lacks
        "core": subprocess.Popen([core_env["samkit"], *TINY_TRAIN], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "full": subprocess.Popen([sys.executable, "-m", "samkit", *TINY_TRAIN, "--quiet"],
                                 env={**os.environ, "OMP_NUM_THREADS": "1",
                                      "MKL_NUM_THREADS": "1"},
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True),
    }
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, (name, stderr)
        out[name] = json.loads(stdout)
    loaded_on_import, err, moved = out["sam"]
    assert not loaded_on_import
    assert moved > 1e-3 and err < 1e-6, (moved, err)
    assert out["core"]["status"] == "ok" and out["core"]["config"]["optimizer"] == "sam"
    assert out["core"]["final"] == out["full"]["final"]   # the same numbers without the extras


@pytest.mark.slow
def test_repository_commands_name_the_extra_they_need_on_the_core_install(core_env):
    for args, extra in ((("sweep",), "study"), (("validate",), "study"),
                        (("stage", "rho"), "book")):
        r = _run([core_env["samkit"], *args], env=core_env["env"], cwd=REPO)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith(f"error: samkit {args[0]}: needs ")
        assert lines[0].endswith(f"pip install 'samkit[{extra}]'"), lines[0]
    # The run cache (sweep/store) needs torch only: its checks run on the core install.
    r = _run([core_env["samkit"], "cache", "verify"], env=core_env["env"], cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("results/runs: ") \
        and r.stdout.rstrip().endswith("results verified"), (r.stdout, r.stderr)
