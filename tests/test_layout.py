"""The layout's two promises, checked on the source: mpnet.py depends on nothing of the project but
the weights fetcher, and the project's imports (at the top of a file or inside a function) form no
circle. Reading order is model <- heads <- strategies <- loop <- tools; a circle would mean that one
of them cannot be read without the other."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("speed", "scale", "reliability", "tools", "weights", "exercises")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for the reading path and the folders beside it (not tests/, experiments/)."""
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    for folder in FOLDERS:
        modules |= {f"{folder}.{p.stem}": p for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}
        modules[folder] = ROOT / folder / "__init__.py"
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module that the file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def test_mpnet_imports_only_the_weights_fetcher():
    modules = project_modules()
    assert imports_of(ROOT / "mpnet.py", modules) == {"weights.fetch"}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules that import each other in a circle, or None (depth-first search)."""
    done, path = set(), []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if circle := visit(dep):
                return circle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        if circle := visit(name):
            return circle
    return None


def test_the_project_imports_form_no_circle():
    modules = project_modules()
    # a module inside a package may import its own package's __init__ without making a circle
    graph = {name: {d for d in imports_of(path, modules) if d != name and not name.startswith(d + ".")}
             for name, path in modules.items()}
    assert len(graph) > 20 and sum(map(len, graph.values())) > 30  # the walk sees the project
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def test_a_circle_is_found():
    assert find_circle({"mpnet": {"corpus"}, "corpus": {"predict"}, "predict": {"mpnet"}}) == [
        "corpus", "predict", "mpnet", "corpus"]
    assert find_circle({"train": {"heads"}, "heads": {"mpnet"}, "mpnet": set()}) is None
