"""The import graph of src/, read from the source with ast (nothing is imported): no import cycles, and no library
module imports a command (`python -m src.<command>`: a top-level module of src/ with a `__main__` block).

Every import counts, wherever it is written (inside functions, under TYPE_CHECKING, relative or absolute): an
import deferred into a function is still a dependency, and hiding a cycle that way is what this test stops."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that `name` imports: `from a.b import c` means module a.b.c where that exists,
    else a.b (c is a name in it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` in a.b.c is a.b.x; each further dot goes one package up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {module for module in found if module in modules and module != name}


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as its modules in order, the first repeated at the end; None when there is none."""
    done: set[str] = set()
    for start in sorted(graph):
        stack = [(start, iter(sorted(graph[start])))]
        on_path = [start]
        while stack:
            module, todo = stack[-1]
            following = next(todo, None)
            if following is None:
                stack.pop()
                on_path.pop()
                done.add(module)
            elif following in on_path:
                return [*on_path[on_path.index(following) :], following]
            elif following not in done:
                stack.append((following, iter(sorted(graph[following]))))
                on_path.append(following)
    return None


def commands(package: Path) -> set[str]:
    """Top-level modules with an `if __name__ == "__main__":` block: the `python -m <package>.<name>` commands."""
    found = set()
    for path in package.glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                found.add(f"{package.name}.{path.stem}")
    return found


def library_imports_of_commands(package: Path) -> list[str]:
    graph, entry_points = import_graph(package), commands(package)
    return sorted(
        f"{module} imports {command}"
        for module, imported in graph.items()
        if module not in entry_points
        for command in imported & entry_points
    )


def test_src_has_no_import_cycle():
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_library_module_imports_a_command():
    entry_points = commands(SRC)
    assert {"src.train", "src.evaluate", "src.prepare", "src.index", "src.search", "src.export"} <= entry_points
    assert library_imports_of_commands(SRC) == []


def test_the_checks_find_a_cycle_through_a_deferred_relative_import_and_a_library_importing_a_command(tmp_path):
    """The checks themselves: a cycle hidden in a function behind a relative import is named, and so is a library
    module that imports a command."""
    files = {
        "pkg/__init__.py": "",
        "pkg/run.py": 'from pkg.lib.a import work\n\nif __name__ == "__main__":\n    work()\n',
        "pkg/lib/__init__.py": "",
        "pkg/lib/a.py": "from pkg.lib import b\n\n\ndef work():\n    return b.helper()\n",
        "pkg/lib/b.py": "def helper():\n    from . import a  # deferred, but still a cycle\n\n    return a\n",
        "pkg/lib/c.py": "import pkg.run\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    package = tmp_path / "pkg"
    assert find_cycle(import_graph(package)) == ["pkg.lib.a", "pkg.lib.b", "pkg.lib.a"]
    assert commands(package) == {"pkg.run"}
    assert library_imports_of_commands(package) == ["pkg.lib.c imports pkg.run"]
    (package / "lib" / "b.py").write_text("def helper():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None
