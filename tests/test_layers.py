"""The package's layer order (docs/architecture.md): a module imports only from its own unit
or from units on lower layers. Imports under `if TYPE_CHECKING:` are annotations, not
dependencies, and are skipped; imports inside functions count."""

import ast
from pathlib import Path

import fastmuse

ROOT = Path(fastmuse.__file__).parent
# bottom to top; a unit is a top-level module or subpackage of fastmuse
LAYERS = [
    ["errors", "fsutil", "__init__"],
    ["config", "fast"],
    ["hub"],
    ["int8", "text"],
    ["data"],
    ["tokenizer", "models"],
    ["sampling"],
    ["editing"],
    ["pipeline"],
    ["convert"],
    ["eval"],
    ["train"],
    ["distill", "serve"],
    ["cli"],
    ["__main__"],
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit_of(parts: tuple[str, ...]) -> str:
    return parts[0].removesuffix(".py")


def imported_units(path: Path, root: Path = ROOT) -> set[str]:
    """The fastmuse units `path` (a file under `root`) imports at run time."""
    pkg = path.relative_to(root).parent.parts
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            for n in ast.walk(node)}
    units = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[:len(pkg) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            # `from .. import x`: the unit x, or a name defined in the package's __init__
            names = {a.name if a.name in LAYER else "__init__" for a in node.names}
            units |= {target[0]} if target else names
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            units |= {n.split(".")[1] for n in names if n and n.startswith("fastmuse.")}
    return units


def test_every_unit_has_a_layer():
    units = {unit_of(p.relative_to(ROOT).parts) for p in ROOT.rglob("*.py")}
    assert units - LAYER.keys() == set(), "add new modules to LAYERS here and in docs/architecture.md"


def test_imports_go_down_the_layers():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = unit_of(path.relative_to(ROOT).parts)
        for target in imported_units(path) - {unit}:
            if LAYER[target] >= LAYER[unit]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target} "
                             f"(layer {LAYER[target]} >= {LAYER[unit]})")
    assert wrong == []


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline import Pipeline\n"
                   "def f():\n    from .serve import app\n")
    assert imported_units(bad, tmp_path) == {"serve"}
