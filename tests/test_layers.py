"""The package's layers: folders by layer, imports only downward, `import samkit` the public API.

pipeline → studies → analysis → sweep → train → optim / data / measure → the base modules
(models, atomic, provenance). A module may import its own layer and any layer below it, never
one above: read from its source (every import statement, also those inside functions)."""
import ast
from pathlib import Path

import samkit

ROOT = Path(samkit.__file__).parent
# Rank of each layer: a module imports only ranks <= its own.
RANKS = {"models": 0, "atomic": 0, "provenance": 0,
         "optim": 1, "data": 1, "measure": 1,
         "train": 2, "sweep": 3, "analysis": 4, "studies": 5, "pipeline": 6,
         "__main__": 7}
TOP_LEVEL_MODULES_MAX = 8


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (the path should name the layer)")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("samkit.")}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        yield (name[: -len(".__init__")] if name.endswith(".__init__") else name), path


def test_imports_run_only_downward():
    wrong = []
    for name, path in _modules():
        layer = _layer(name)
        if layer == "__init__":
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if target in RANKS and RANKS[target] > RANKS[layer]:
                wrong.append(f"{name} ({layer}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)


def test_every_module_belongs_to_a_known_layer_and_the_top_level_stays_small():
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert len(top) <= TOP_LEVEL_MODULES_MAX, top
    for name, _ in _modules():
        assert _layer(name) in {*RANKS, "__init__"}, f"{name}: in no layer"


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself: an optimizer module importing the pipeline is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from samkit.pipeline.params import load\n")
    imported = _imports(bad)
    assert "samkit.pipeline.params" in imported
    assert RANKS[_layer("samkit.pipeline.params")] > RANKS[_layer("samkit.optim.bad")]
