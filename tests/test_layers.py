"""The package's layers, read from its own imports: no import points back up, no two packages import each
other, and each package's docstring says exactly which parts of rlft it imports."""

import ast
import functools
import re
from pathlib import Path

import rlft

PACKAGE = Path(rlft.__file__).parent


def unit_of(module: str) -> str:
    """The part of rlft a dotted module belongs to: its package ('zoo') or top-level module ('loop')."""
    return module.split(".")[1]


def rlft_imports(tree: ast.AST) -> set[str]:
    """Every rlft module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlft."):
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "rlft":
            found |= {f"rlft.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("rlft.")}
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """{unit: the other units it imports} over every .py file of the package; data packages (prompt sets,
    recipes), whose only Python file is their __init__.py, hold no code and are left out."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        unit = relative.parts[0].removesuffix(".py")
        folder = PACKAGE / unit
        data_only = folder.is_dir() and all(p.name == "__init__.py" for p in folder.glob("*.py"))
        if relative == Path("__init__.py") or data_only:
            continue
        imported = {unit_of(m) for m in rlft_imports(ast.parse(path.read_text()))}
        graph.setdefault(unit, set()).update(imported - {unit})
    return graph


def stated_imports(package: str) -> set[str] | None:
    """What a package's docstring says it imports ('Imports from rlft: a, b and c.'), None if it says not."""
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
    match = re.search(r"Imports from rlft: ([^.]+)\.", doc)
    if match is None:
        return None
    words = re.split(r",\s*|\s+and\s+", match.group(1).strip())
    return set() if words == ["nothing"] else set(words)


def layer_order() -> list[str]:
    """The units in the order rlft/__init__.py's docstring lists them, lowest first."""
    names = re.findall(r"`rlft\.(\w+)`", rlft.__doc__ or "")
    return list(dict.fromkeys(name for name in names if name in import_graph()))


def upward_imports(graph: dict[str, set[str]], order: list[str]) -> list[str]:
    """'a imports b' for every import from a unit to one at or above it in `order` (lowest first)."""
    position = {unit: i for i, unit in enumerate(order)}
    return sorted(
        f"{unit} imports {other}"
        for unit, others in graph.items()
        for other in others
        if position[other] >= position[unit]
    )


def test_no_import_points_back_up_the_layers_the_package_docstring_lists():
    graph, order = import_graph(), layer_order()
    assert sorted(order) == sorted(graph), "rlft/__init__.py's list of layers misses or adds a part"
    assert upward_imports(graph, order) == []


def test_each_package_docstring_names_exactly_what_it_imports():
    graph = import_graph()
    packages = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name in graph]
    assert {"world", "families", "zoo", "diffusion"} <= set(packages)
    for package in packages:
        stated = stated_imports(package)
        assert stated is not None, f"rlft/{package}/__init__.py does not say what it imports"
        assert stated == graph[package], (package, stated, graph[package])


def test_the_check_sees_lazy_imports_and_catches_one_that_points_up():
    """The kind that once pointed from the model code up to the prompt sets, inside a function."""
    code = "def tokenizer():\n    from rlft.prompts import PROMPT_SETS\n    return PROMPT_SETS\n"
    assert rlft_imports(ast.parse(code)) == {"rlft.prompts"}
    graph = {"world": set(), "zoo": {"world", "prompts"}, "prompts": {"world"}}
    assert upward_imports(graph, ["world", "zoo", "prompts"]) == ["zoo imports prompts"]
    assert upward_imports(graph, ["world", "prompts", "zoo"]) == []
