"""incept's layers, checked: no import runs up the layers, no two parts import each other.

The layer table is docs/architecture.md's; this test reads it from that page, so the page and
the check cannot drift apart. Every `import` and `from ... import` of every module under
src/incept counts, at the top of a module or inside a function, as do
`importlib.import_module("incept....")` calls with a literal name.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "incept"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
TABLE_MARK = "<!-- the layer table: tests/test_layering.py reads it -->"


@dataclass(frozen=True)
class Place:
    layer: int  # 1 at the bottom
    order: int  # position in its row: a part may import those before it in the same row
    name: str  # the layer's name, for messages


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "incept.evaluate"
    line: int
    target: str  # the module imported, e.g. "incept.train.distributed"

    def __str__(self) -> str:
        return f"{self.module} line {self.line} imports {self.target}"


def read_layer_table(text: str) -> dict[str, Place]:
    """{part: Place} from the table after TABLE_MARK (rows bottom up; parts in backticks,
    `name/` for a folder, `name.py` for a module; `__init__.py` is the package itself)."""
    assert TABLE_MARK in text, f"{ARCHITECTURE.name} lost its layer table mark {TABLE_MARK!r}"
    lines = text.split(TABLE_MARK, 1)[1].strip().splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    table: dict[str, Place] = {}
    for layer, (name, parts, *_) in enumerate(rows[2:], start=1):  # after header, separator
        for order, written in enumerate(re.findall(r"`([^`]+)`", parts)):
            part = "incept" if written == "__init__.py" else written.removesuffix("/")
            part = part.removesuffix(".py")
            assert part not in table, f"{written} is in the layer table twice"
            table[part] = Place(layer, order, re.sub(r"^\d+\s*", "", name))
    return table


def package_modules(package: Path) -> dict[str, tuple[str, bool]]:
    """{module name: (source, is a package's __init__)} of every module under `package`."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path.read_text(encoding="utf-8"), is_package)
    return modules


def part_of(module: str) -> str:
    """The part a module belongs to: "incept.train.loop" -> "train", "incept" -> "incept"."""
    names = module.split(".")
    return names[1] if len(names) > 1 else names[0]


def imports_in(modules: dict[str, tuple[str, bool]]) -> list[Import]:
    """Every import of an incept module, anywhere in each module's code."""
    found = []
    for module, (source, is_package) in modules.items():
        for node in ast.walk(ast.parse(source, filename=module)):
            for target in _targets(node, module, is_package, modules):
                if target == "incept" or target.startswith("incept."):
                    found.append(Import(module, node.lineno, target))
    return found


def _targets(node: ast.AST, module: str, is_package: bool, modules) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: counted from the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([node.module] if node.module else [])])
        # `from incept import nets` imports the module incept.nets, not only incept.
        named = [f"{base}.{alias.name}" for alias in node.names]
        return [name for name in named if name in modules] or [base]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def upward_imports(imports: list[Import], table: dict[str, Place]) -> list[str]:
    """One line per import of a higher part (or a later one in the same row)."""
    wrong = []
    for found in imports:
        importer, imported = part_of(found.module), part_of(found.target)
        if importer == imported:
            continue
        low, high = table[imported], table[importer]
        if (low.layer, low.order) >= (high.layer, high.order):
            wrong.append(
                f"{found}: {importer} (layer {high.layer}, {high.name}) may not import "
                f"{imported} (layer {low.layer}, {low.name})"
            )
    return wrong


def part_cycles(imports: list[Import]) -> list[str]:
    """One line per loop of parts that import each other, directly or through others: the
    shortest loop through the first part of each group, as the imports that make it."""
    edges: dict[str, dict[str, Import]] = {}
    for found in imports:
        importer, imported = part_of(found.module), part_of(found.target)
        if importer != imported:
            edges.setdefault(importer, {}).setdefault(imported, found)

    def shortest_path(start: str, goal: str) -> list[str] | None:
        came_from: dict[str, str] = {}
        todo = [start]
        while todo:
            here = todo.pop(0)
            for after in sorted(edges.get(here, {})):
                if after == goal:
                    path = [here, goal]
                    while path[0] != start:
                        path.insert(0, came_from[path[0]])
                    return path
                if after not in came_from and after != start:
                    came_from[after] = here
                    todo.append(after)
        return None

    cycles, in_a_loop = [], set()
    for part in sorted(edges):
        loop = None if part in in_a_loop else shortest_path(part, part)
        if loop is None:
            continue
        in_a_loop |= {other for other in edges if shortest_path(part, other)
                      and shortest_path(other, part)}  # fmt: skip
        steps = [str(edges[a][b]) for a, b in zip(loop, loop[1:], strict=False)]
        cycles.append(f"{' -> '.join(loop)}: {'; '.join(steps)}")
    return cycles


@pytest.fixture(scope="module")
def table() -> dict[str, Place]:
    return read_layer_table(ARCHITECTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return imports_in(package_modules(PACKAGE))


def test_the_layer_table_names_every_part_of_the_package(table):
    parts = {part_of(module) for module in package_modules(PACKAGE)}
    assert not parts - set(table), f"add to the table in {ARCHITECTURE}: {parts - set(table)}"
    assert not set(table) - parts, f"the table in {ARCHITECTURE} names no such part"


def test_no_import_runs_up_the_layers(table, imports):
    wrong = upward_imports(imports, table)
    assert not wrong, "\n".join(wrong)


def test_no_parts_import_each_other(imports):
    cycles = part_cycles(imports)
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_imports_inside_functions_and_relative_ones():
    # A made-up package: data (below) reaches train (above) inside a function and relatively.
    modules = {
        "incept": ("", True),
        "incept.errors": ("", False),
        "incept.data": ("from incept.data.loader import make_loader\n", True),
        "incept.data.loader": ("def make_loader():\n    from ..train import loop\n", False),
        "incept.train": ("", True),
        "incept.train.loop": ("import incept.errors\nfrom incept import data\n", False),
    }
    table = read_layer_table(
        f"{TABLE_MARK}\n| Layer | Parts | |\n| - | - | - |\n| 1 base | `errors.py` | |\n"
        "| 2 low | `data/` | |\n| 3 high | `train/` | |\n"
    )
    found = imports_in(modules)
    assert {str(i) for i in found} == {
        "incept.data line 1 imports incept.data.loader",
        "incept.data.loader line 2 imports incept.train.loop",
        "incept.train.loop line 1 imports incept.errors",
        "incept.train.loop line 2 imports incept.data",
    }
    assert upward_imports(found, table) == [
        "incept.data.loader line 2 imports incept.train.loop: data (layer 2, low) may not "
        "import train (layer 3, high)"
    ]
    assert part_cycles(found) == [
        "data -> train -> data: incept.data.loader line 2 imports incept.train.loop; "
        "incept.train.loop line 2 imports incept.data"
    ]
    # The same row: a part may import one listed before it, not one after.
    same_row = read_layer_table(
        f"{TABLE_MARK}\n| L | P |\n| - | - |\n| 1 only | `errors.py`, `train/`, `data/` |\n"
    )
    assert [line.split(":")[0] for line in upward_imports(found, same_row)] == [
        "incept.train.loop line 2 imports incept.data"
    ]
