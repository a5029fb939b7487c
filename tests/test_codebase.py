"""Rules of the code base: core never imports streamlit; README, test.sh and CI agree."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_streamlit_or_the_ui():
    files = sorted((REPO / "core").rglob("*.py"))
    assert len(files) >= 6
    for path in files:
        forbidden = imported_modules(path) & {"streamlit", "app_pages", "components"}
        assert not forbidden, f"{path.relative_to(REPO)} imports {forbidden}"


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
        [sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--output-format", "concise", "core", "app_pages", "components", "app.py", "tests", "bench"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
