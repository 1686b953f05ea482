"""The code's layout as the glue issue fixed it: no ``sys.path`` manipulation, no two modules that
import each other, scripts that are short recipes over the installed packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kd_backend", "envs", "agents")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of ``modules`` that ``path`` imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
    return found & set(modules)


def test_no_sys_path_manipulation_anywhere():
    offenders = [
        f"{f.relative_to(REPO)}:{i}"
        for folder in (*PACKAGES, "experiments", "tests")
        for f in (REPO / folder).rglob("*.py") if f.resolve() != Path(__file__).resolve()
        for i, line in enumerate(f.read_text().splitlines(), 1) if re.search(r"sys\.path\.(insert|append)", line)
    ]
    assert not offenders, f"sys.path is changed at {offenders}; import the installed packages instead"


def test_no_two_modules_import_each_other():
    modules = _modules()
    edges = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    mutual = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if a in edges[b]})
    assert not mutual, f"modules that import each other: {mutual}"


def test_scripts_are_short_recipes_over_the_packages():
    scripts = sorted((REPO / "experiments").glob("*.py"))
    assert {s.name for s in scripts} >= {"learn_policy.py", "replay_schedule.py", "compare.py", "search_schedule.py"}
    long = {s.name: n for s in scripts if (n := len(s.read_text().splitlines())) > 90}
    assert not long, f"scripts longer than ~80 lines (move their logic into agents/ or kd_backend/): {long}"
    for name in ("learn_policy", "replay", "compare", "search_schedule", "pbt_schedule"):
        import agents

        assert callable(getattr(agents, name))  # the jobs are importable after pip install


def test_the_learn_config_takes_the_algorithms_from_the_factory():
    import typing

    from agents.configs import Algo
    from agents.factory import ALGORITHMS

    assert set(typing.get_args(Algo)) == set(ALGORITHMS)
