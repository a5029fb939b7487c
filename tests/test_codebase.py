"""Rules of the code base: the layers of the package, streamlit only in the app; README, test.sh and CI agree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "labelloop"
# Each sub-package and its layer: a module may import its own layer's package and lower layers only
# (maps and train are peers: neither imports the other). The package face (labelloop/__init__.py)
# and ``python -m labelloop`` sit with the CLI.
LAYERS = {"errors": 0, "settings": 0.5, "data": 1, "compute": 2, "embed": 3, "maps": 4, "train": 4, "scores": 5, "api": 6, "cli": 6, "__init__": 6, "__main__": 6, "app": 7}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a file, inside functions too; relative imports resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def layer(module: str) -> tuple[int, str]:
    """(layer number, sub-package) of a labelloop module."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{module}: labelloop/{top} is in no layer; add it to LAYERS in tests/test_codebase.py"
    return LAYERS[top], top


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def internal_edges() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a name imported from a package counts as that package)."""
    modules = package_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {resolve(name) for _, name in imports_of(path) if name.split(".")[0] == "labelloop"}
        edges[module] = {t for t in targets if t and t != module}
    return edges


def test_lower_layers_never_import_higher_ones_not_even_inside_a_function():
    wrong = []
    for module, path in package_modules().items():
        here, here_package = layer(module)
        for line, name in imports_of(path):
            if name.split(".")[0] != "labelloop" or name == "labelloop":
                continue
            there, there_package = layer(name)
            if there > here or (there == here and there_package != here_package and here_package not in ("__init__", "__main__")):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name} ({there_package} is not below {here_package})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycles():
    edges = internal_edges()
    # A package's __init__ that only hands names on is not a node of its own: importing it is importing what it imports.
    faces = {m for m, p in package_modules().items() if p.name == "__init__.py"}

    def through_faces(targets: set[str], seen: frozenset = frozenset()) -> set[str]:
        out = set()
        for target in targets:
            if target in faces and target not in seen:
                out |= through_faces(edges[target], seen | {target})
            elif target not in faces:
                out.add(target)
        return out

    graph = {m: through_faces(ts) - {m} for m, ts in edges.items() if m not in faces}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_only_the_app_imports_streamlit():
    for module, path in package_modules().items():
        if layer(module)[1] == "app":
            continue
        names = {name.split(".")[0] for _, name in imports_of(path)}
        assert "streamlit" not in names, f"{path.relative_to(REPO)} imports streamlit; only labelloop/app may"


def test_the_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["./run.sh", "./test.sh"]
    assert readme.index("```bash") < 40  # right at the top
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert [line for line in ci.splitlines() if line and not line.startswith("#") and not line.startswith("set ") and not line.startswith("cd ")] == ["./test.sh"]


def test_no_unused_imports_undefined_names_or_syntax_errors():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--output-format", "concise", "labelloop", "tests", "bench"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_function_is_longer_than_80_lines():
    """Past a screen and a half a function does several jobs: split it (docstrings count)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def page_script(path: Path) -> list[ast.stmt]:
    """The top-level statements of a page that are script: not imports, the docstring, constants
    (UPPER_CASE names), function or class definitions, nor the final ``main()`` call."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    last = body[-1] if body else None
    if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Name) and last.value.func.id == "main":
        body = body[:-1]

    def constant(node: ast.stmt) -> bool:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names = [name for target in targets for name in (target.elts if isinstance(target, ast.Tuple) else [target])]
        return bool(names) and all(isinstance(name, ast.Name) and name.id.isupper() for name in names)

    definitions = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node for node in body if not isinstance(node, definitions) and not constant(node)]


def test_every_page_is_functions_and_a_main_not_a_top_level_script():
    """A page's state passes as arguments (see views/map.py): a long top-level script makes every
    function read it through module globals, and one page's names leak into the next edit."""
    scripted = []
    for path in sorted((PACKAGE / "app" / "views").glob("*.py")):
        if path.name == "__init__.py":
            continue
        script = page_script(path)
        if len(script) > 3:
            scripted.append(f"{path.relative_to(REPO)}: {len(script)} top-level statements (lines {', '.join(str(n.lineno) for n in script[:8])})")
    assert not scripted, "pages with a top-level script (move it into functions called from main()):\n" + "\n".join(scripted)
