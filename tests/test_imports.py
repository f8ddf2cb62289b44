"""The package's import structure (issue 13; DESIGN.md "Package layout").

Read from the source with :mod:`ast`, without importing anything:

- function-level imports only of optional (or slow-to-import) dependencies, each commented
  with the word "optional" on its line or in the comment lines right above it;
- no import of the ``normlab`` facade from inside the package;
- the layer order of DESIGN.md in module-level imports (``TYPE_CHECKING`` blocks included):
  ``functional`` <- ``norms`` <- ``distributed`` <- ``models``; ``data`` apart; ``train``
  never imports ``tasks``, ``experiments``, ``report`` or the CLI; ``report`` may import
  ``experiments``, not the reverse;
- no import cycle between the package's modules.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "normlab"

OPTIONAL = (
    "triton",
    "torchvision",
    "timm",
    "pycocotools",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "torchao",
    "tensorboard",
    "torch.utils.tensorboard",
    "PIL",
    "skimage",
    "sklearn",
    "matplotlib",
    "normlab.functional.triton_kernels",
)
"""What a function may import: optional dependencies (extras), and the hard ones that take
seconds to import and serve one command (matplotlib for figures, scikit-learn for the
digits), so that ``import normlab`` and ``normlab --help`` stay fast."""

LAYERS: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "functional": frozenset({"errors"}),
    "norms": frozenset({"errors", "functional"}),
    "distributed": frozenset({"errors", "functional", "norms"}),
    "models": frozenset({"errors", "functional", "norms", "distributed"}),
    "data": frozenset({"errors"}),
    "train": frozenset({"errors", "functional", "norms", "distributed", "models", "data"}),
    "tasks": frozenset(
        {"errors", "functional", "norms", "distributed", "models", "data", "train"}
    ),
    "experiments": frozenset(
        {"errors", "functional", "norms", "distributed", "models", "data", "train", "tasks"}
    ),
    "report": frozenset(
        {"errors", "functional", "norms", "distributed", "models", "data", "train", "tasks",
         "experiments"}
    ),
    "bench": frozenset({"errors", "functional", "norms", "distributed", "models", "data"}),
}
"""Layer -> the layers its modules may import at module level (besides itself). The CLI,
the facade (``normlab/__init__.py``) and ``__main__`` sit on top and may import any."""

KNOWN: dict[tuple[str, str], str] = {}
"""(check, module) -> why the module still fails that check, while its owner reworks it
(strict xfail: the entry must go once the module passes)."""


@dataclass(frozen=True)
class Import:
    module: str  # the imported module's dotted name (``from a import b``: ``a.b`` if a module)
    line: int
    in_function: bool
    commented_optional: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, name: str, current: str, is_package: bool) -> str:
    base = node.module or ""
    if node.level:
        anchor = current.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    candidate = f"{base}.{name}" if base else name
    return candidate if candidate in MODULES else base


def _commented(lines: list[str], line: int) -> bool:
    """Whether the import on 1-based ``line`` says "optional" there or in the comment
    lines right above it."""
    if "optional" in lines[line - 1]:
        return True
    above = line - 2
    while above >= 0 and lines[above].strip().startswith("#"):
        if "optional" in lines[above]:
            return True
        above -= 1
    return False


def imports_of(name: str) -> list[Import]:
    """Every import statement of module ``name``, in source order."""
    path = MODULES[name]
    return _imports(path.read_text(), name, path.name == "__init__.py")


def _imports(source: str, name: str, is_package: bool) -> list[Import]:
    lines = source.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(
                        Import(alias.name, child.lineno, in_function,
                               _commented(lines, child.lineno))
                    )
            elif isinstance(child, ast.ImportFrom):
                for alias in child.names:
                    module = _resolve(child, alias.name, name, is_package)
                    found.append(
                        Import(module, child.lineno, in_function,
                               _commented(lines, child.lineno))
                    )
            visit(child, inside)

    visit(ast.parse(source, name), False)
    return found


def _is_optional(module: str) -> bool:
    return any(module == o or module.startswith(o + ".") for o in OPTIONAL)


def _layer(module: str) -> str | None:
    """The layer of a ``normlab.*`` module (``None`` for the facade, ``__main__`` and cli)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("cli", "__main__"):
        return None
    return parts[1]


def _cases(check: str) -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN[check, name], strict=True))
        if (check, name) in KNOWN
        else name
        for name in MODULES
    ]


@pytest.mark.parametrize("name", _cases("function"))
def test_function_level_imports_are_commented_optional_dependencies(name: str) -> None:
    bad = [  # one entry per imported name
        f"line {i.line}: {i.module}"
        + ("" if _is_optional(i.module) else " (not an optional dependency)")
        + ("" if i.commented_optional else " (no '# optional ...' comment)")
        for i in imports_of(name)
        if i.in_function and not (_is_optional(i.module) and i.commented_optional)
    ]
    assert not bad, f"{name}: function-level imports {bad}; import at module level"


@pytest.mark.parametrize("name", _cases("facade"))
def test_no_facade_import_inside_the_package(name: str) -> None:
    if name == "normlab":
        return
    bad = [i.line for i in imports_of(name) if i.module == "normlab"]
    assert not bad, (
        f"{name} imports the normlab facade (lines {bad}); import from the defining module"
    )


@pytest.mark.parametrize("name", _cases("layers"))
def test_module_level_imports_follow_the_layer_order(name: str) -> None:
    layer = _layer(name)
    if layer is None:
        return
    allowed = LAYERS.get(layer)
    assert allowed is not None, f"{name}: layer {layer!r} missing from LAYERS in this test"
    bad = sorted(
        {
            f"{i.module} (line {i.line})"
            for i in imports_of(name)
            if not i.in_function
            and i.module.startswith("normlab.")
            and _layer(i.module) not in allowed | {layer}
        }
    )
    assert not bad, f"{name} ({layer}) imports a later layer at module level: {bad}"


def test_no_import_cycles() -> None:
    graph = {
        name: sorted({i.module for i in imports_of(name) if not i.in_function} & set(MODULES))
        for name in MODULES
    }
    done: set[str] = set()
    cycles: list[list[str]] = []

    def walk(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        for nxt in graph[name]:
            walk(nxt, path + [name])
        done.add(name)

    for name in MODULES:
        walk(name, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walk_finds_nested_imports_and_their_comments() -> None:
    source = (
        "import a\n"
        "class A:\n"
        "    def f(self):\n"
        "        # optional dependency: x\n"
        "        import x\n"
        "        from normlab.norms import base\n"
    )
    found = _imports(source, "normlab.t", False)
    assert [(i.module, i.in_function, i.commented_optional) for i in found] == [
        ("a", False, False),
        ("x", True, True),
        ("normlab.norms.base", True, False),
    ]
