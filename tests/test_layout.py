"""The layout's promises, checked on the source. Imports run one way, down the tiers the README
draws: a module imports only modules of its own tier or of the tiers below it, so each file can be
read without the ones above it. mpnet.py depends on nothing of the project but the weights fetcher.
And no imports (at the top of a file or inside a function) form a circle.

Imports under `if TYPE_CHECKING:` are left out: they name types for annotations and never run."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("speed", "scale", "reliability", "tools", "weights", "exercises")

# Bottom to top. A folder's name stands for the package and every module in it.
TIERS = [
    {"weights"},                                    # the weights fetcher
    {"mpnet"},                                      # the encoder
    {"heads"},                                      # multi-task heads
    {"freeze", "lr_groups", "data", "metrics"},     # strategies, the data, pair metrics
    {"speed", "scale", "reliability", "recipes", "train_state"},  # the seams, the run's state
    {"train_config"},                               # the flags
    {"train"},                                      # the loop
    {"eval", "predict", "walkthrough"},             # beside the loop
    {"tools", "exercises"},                         # tools
]
# An import that runs upward, with its reason; at most three.
EXEMPT: dict[tuple[str, str], str] = {}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for the reading path and the folders beside it (not tests/, experiments/)."""
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    for folder in FOLDERS:
        modules |= {f"{folder}.{p.stem}": p for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}
        modules[folder] = ROOT / folder / "__init__.py"
    return modules


def type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module that the file imports at run time, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped, found = type_checking_only(tree), set()
    for node in ast.walk(tree):
        names = []
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def tier_of(module: str) -> int:
    top = module.split(".")[0]
    for i, members in enumerate(TIERS):
        if top in members:
            return i
    raise AssertionError(f"{module} is in no tier of test_layout.TIERS: put it where it belongs")


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) for each import into a higher tier."""
    return sorted((a, b) for a, deps in graph.items() for b in deps if tier_of(b) > tier_of(a))


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    # a module inside a package may import its own package's __init__ without making a circle
    return {name: {d for d in imports_of(path, modules) if d != name and not name.startswith(d + ".")}
            for name, path in modules.items()}


def test_mpnet_imports_only_the_weights_fetcher():
    modules = project_modules()
    assert imports_of(ROOT / "mpnet.py", modules) == {"weights.fetch"}
    assert imports_of(ROOT / "heads.py", modules) == {"mpnet"}


def test_every_import_runs_down_the_tiers():
    graph = import_graph()
    assert len(graph) > 20 and sum(map(len, graph.values())) > 30  # the walk sees the project
    assert len(EXEMPT) <= 3 and all(EXEMPT.values())  # few exemptions, each with its reason
    upward = [pair for pair in upward_imports(graph) if pair not in EXEMPT]
    assert not upward, "imports into a higher tier: " + ", ".join(f"{a} -> {b}" for a, b in upward)
    # The seams do their job without the loop or the flags.
    seams = [m for m in graph if m.split(".")[0] in ("speed", "scale", "reliability")]
    assert len(seams) > 10 and not [m for m in seams if graph[m] & {"train", "train_config"}]


def test_an_upward_import_is_found():
    assert upward_imports({"heads": {"mpnet"}, "mpnet": {"weights.fetch"}}) == []
    assert upward_imports({"speed.training": {"train"}, "train": {"heads"}}) == [("speed.training", "train")]
    assert upward_imports({"reliability.run_folder": {"train_config"}}) == [("reliability.run_folder", "train_config")]


def test_type_checking_imports_are_left_out(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nimport heads\nif TYPE_CHECKING:\n    import train\n")
    assert imports_of(source, {"heads": source, "train": source}) == {"heads"}


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
    graph = import_graph()
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def test_a_circle_is_found():
    assert find_circle({"mpnet": {"corpus"}, "corpus": {"predict"}, "predict": {"mpnet"}}) == [
        "corpus", "predict", "mpnet", "corpus"]
    assert find_circle({"train": {"heads"}, "heads": {"mpnet"}, "mpnet": set()}) is None
