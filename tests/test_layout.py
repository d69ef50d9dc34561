"""The package's layout holds: floors, no import circle, no private names
across modules, one import-alias style, one formatter (docs/architecture.md).

Read from the source (ASTs), so a violation fails here whether or not any
other test happens to import the offending module.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlvr_jax"

# A floor never imports a higher one (docs/architecture.md). Longest prefix
# wins; the package root and every module not listed are the top floor.
FLOORS = {
    "rlvr_jax.io": 0,
    "rlvr_jax.sharding": 0,
    "rlvr_jax.distributed": 0,
    "rlvr_jax.metrics": 0,
    "rlvr_jax.model": 1,
    "rlvr_jax.reward": 1,
    "rlvr_jax.data": 1,
    "rlvr_jax.rollout": 2,
    "rlvr_jax.learner": 2,
    "rlvr_jax.checkpoint": 2,  # reads HF dirs and tokenizers (floor 1)
    "rlvr_jax.planning": 3,
    "rlvr_jax.evaluation": 3,
    "rlvr_jax.lab": 3,
}
TOP = 4
# Stable import paths that are the same module object as their target
# (`sys.modules` aliases): for outside callers; the package itself imports
# the targets.
ALIASES = {
    "rlvr_jax.sampler",
    "rlvr_jax.grpo",
    "rlvr_jax.params",
    "rlvr_jax.checker",
    "rlvr_jax.select",
    "rlvr_jax.plot",
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {
    _module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__main__.py"
}


def _is_module(name: str) -> bool:
    return name in MODULES


def _floor(name: str) -> int:
    best, floor = "", TOP
    for prefix, f in FLOORS.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(
            best
        ):
            best, floor = prefix, f
    return floor


def _imports(name: str):
    """(imported module, alias bound or None, node) of every import of
    `name`'s source, at any depth (a lazy import is an import too)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("rlvr_jax"):
                    yield a.name, a.asname, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            if not base.startswith("rlvr_jax"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if _is_module(sub):  # `from package import module`
                    yield sub, a.asname or a.name, node
                else:  # a name from a module
                    yield base, None, node


def _graph() -> dict[str, set[str]]:
    return {
        name: {m for m, _, _ in _imports(name) if _is_module(m) and m != name}
        for name in MODULES
    }


def test_every_module_is_known_and_has_a_docstring():
    assert "rlvr_jax.build" in MODULES and "rlvr_jax.planning.programs" in MODULES
    for name, path in MODULES.items():
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name}: no docstring"


def test_no_floor_imports_a_higher_one():
    bad = [
        f"{name} (floor {_floor(name)}) imports {dep} (floor {_floor(dep)})"
        for name, deps in _graph().items()
        for dep in deps
        if _floor(dep) > _floor(name)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = _graph()
    # A package face imports its parts; a part reaching its own face back
    # would be a circle like any other.
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_uses_another_modules_private_names():
    bad = []
    for name in MODULES:
        tree = ast.parse(MODULES[name].read_text())
        bound = {}  # local name -> rlvr_jax module it stands for
        for module, alias, node in _imports(name):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{name}: from {node.module} import {a.name}")
            if alias and _is_module(module):
                bound[alias] = module
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_the_package_imports_no_compat_alias_and_one_alias_style():
    """Internal code imports the real modules, never the stable-path
    aliases; an rlvr_jax module is bound by its name, or by a name ending in
    `_lib` where the plain one would clash."""
    bad = []
    for name in MODULES:
        for module, alias, _node in _imports(name):
            if module in ALIASES and name not in ALIASES:
                bad.append(f"{name}: imports the alias {module}")
            if not _is_module(module) or alias is None:
                continue
            plain = module.rpartition(".")[2]
            if alias != plain and not alias.endswith("_lib"):
                bad.append(f"{name}: {module} as {alias}")
    assert not bad, "\n".join(bad)


def test_stable_paths_are_the_modules_they_name():
    import rlvr_jax.checker
    import rlvr_jax.grpo
    import rlvr_jax.learner
    import rlvr_jax.model
    import rlvr_jax.model.params
    import rlvr_jax.params
    import rlvr_jax.reward
    import rlvr_jax.reward.checker
    import rlvr_jax.rollout
    import rlvr_jax.sampler

    assert rlvr_jax.sampler is rlvr_jax.rollout
    assert rlvr_jax.grpo is rlvr_jax.learner
    assert rlvr_jax.params is rlvr_jax.model.params
    assert rlvr_jax.checker is rlvr_jax.reward.checker
    # The documented API (../DESIGN.md's list) at its documented paths.
    for module, names in (
        (rlvr_jax.params, ("load_hf", "save_hf")),
        (rlvr_jax.model, ("forward", "ModelConfig", "init_params")),
        (rlvr_jax.sampler, ("generate", "rollout", "SamplingSettings", "Rollout")),
        (rlvr_jax.checker, ("extract_answer", "is_equivalent", "reward")),
        (rlvr_jax.reward, ("score_batch", "RewardPool")),
        (rlvr_jax.grpo, ("advantages", "policy_loss", "train_step", "LearnerConfig")),
    ):
        for attr in names:
            assert callable(getattr(module, attr)), f"{module.__name__}.{attr}"


@pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is in the test extra"
)
def test_one_formatter():
    """ruff format (pyproject.toml's settings) leaves every file as it is,
    and ruff check finds nothing."""
    paths = ["rlvr_jax", "tests", "benchmarks", "configs"]
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
