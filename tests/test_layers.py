"""The import graph of function/ flows one way (README's module map): a module imports only
modules of lower layers, so the pure decision never reaches for I/O and no cycle can form."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "function"
# Lowest first; a module may import modules of the layers before its own, never its own or later.
LAYERS = [
    {"errors", "logs"},
    {"model", "conditions"},
    {"connection", "renewal", "template", "kevents", "events"},
    {"pullsecret", "protection"},
    {"decide"},
    {"cache", "kube", "quay"},
    {"observe", "apply"},
    {"reconcile", "resync"},
    {"main"},
]


def _layer(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def _imports(path: Path) -> set[str]:
    """Every function.* module the file imports, at any depth (lazy and TYPE_CHECKING ones too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "function":
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("function."):
            out.add(str(node.module).split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("function."))
    return out


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert modules == set().union(*LAYERS)


def test_imports_go_down_the_layers_only() -> None:
    wrong = [f"{path.stem} (layer {_layer(path.stem)}) imports {name} (layer {_layer(name)})"
             for path in sorted(ROOT.glob("*.py")) if path.stem != "__init__"
             for name in sorted(_imports(path)) if _layer(name) >= _layer(path.stem)]
    assert not wrong, "\n".join(wrong)
