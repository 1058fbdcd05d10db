"""The layering of docs/architecture.md, checked: every import inside factlearn (lazy imports
included) points to the same layer or one below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "factlearn"

# Bottom to top, as docs/architecture.md lists them; a module belongs to its longest matching prefix.
LAYERS = [
    ("core", ["errors", "io", "config", "facts", "device", "distributed", "progress"]),
    ("data", ["data"]),
    ("model", ["model"]),
    ("objectives and retrieval", ["losses", "retrieval"]),
    ("methods", ["continual"]),
    ("run directory", ["run", "results"]),
    ("evaluation", ["evaluate"]),
    ("training", ["training"]),
    ("applications", ["query", "compare", "importance", "serve"]),
    ("experiments", ["experiments"]),
    ("interface", ["cli", "cli_data", "cli_options", "__main__", "__init__"]),
]


def layer_of(module: str) -> int:
    """Index in LAYERS of a dotted module name relative to the package (``data.images``)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"factlearn.{module} is in no layer of LAYERS (docs/architecture.md)")
    return best[0]


def modules() -> list[tuple[str, Path]]:
    """Every module of the package as (dotted name relative to the package, file)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def imports(name: str, path: Path) -> list[str]:
    """The factlearn modules ``path`` imports anywhere in its body, relative to the package."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if path.name == "__init__.py" and path.parent == PACKAGE:
        package = []
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("factlearn"):
                target = node.module.removeprefix("factlearn").lstrip(".")
            else:
                continue
            if target:
                found.append(target)
            else:  # "from . import x": a module of the package, or a name of its root (__version__)
                found += [a.name for a in node.names if (PACKAGE / a.name).is_dir()
                          or (PACKAGE / f"{a.name}.py").is_file()]
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("factlearn.") for a in node.names if a.name.startswith("factlearn.")]
    return found


def test_layer_of_resolves_longest_prefix():
    assert layer_of("data.images") == 1 and layer_of("run") == 5 and layer_of("results") == 5
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("nowhere")


def test_imports_see_lazy_and_relative_imports(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("from ..run import RunDir\n\ndef f():\n    from ..training import train\n    import factlearn.cli\n")
    assert sorted(imports("continual.m", code)) == ["cli", "run", "training"]


@pytest.mark.parametrize("name, path", modules(), ids=[m for m, _ in modules()])
def test_imports_only_point_down(name, path):
    mine = layer_of(name)
    upward = [t for t in imports(name, path) if layer_of(t) > mine]
    assert not upward, (f"factlearn.{name} ({LAYERS[mine][0]}) imports a higher layer: "
                        + ", ".join(f"factlearn.{t} ({LAYERS[layer_of(t)][0]})" for t in upward))
