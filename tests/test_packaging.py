"""Packaging: every import is a declared dependency, the wheel carries the data.

A dependency that arrives only through the test extra passes the suite and
breaks `pip install -e .` for users; `.ci/run` also runs the README's first
command in a fresh virtualenv without extras, and these checks name the
culprit without one.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from rlvr_jax.data import paper_data
from rlvr_jax.planning import chips

REPO = Path(__file__).resolve().parents[1]
# Modules that need an extra at import time (the extra's name).
EXTRA_MODULES = {"tfds_builders": "eval"}


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """(core distribution names, {extra: distribution names}) from setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    lists = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            lists[node.targets[0].id] = node.value

    def names(value) -> set[str]:
        if isinstance(value, ast.Name):  # "eval": EVAL
            return names(lists[value.id])
        out = set()
        for elt in value.elts:
            if isinstance(elt, ast.Starred):
                out |= names(lists[elt.value.id])
            else:
                out.add(_normalise(re.split(r"[\[=<>]", elt.value)[0]))
        return out

    extras = {
        k.value: names(v) for k, v in zip(lists["EXTRAS"].keys, lists["EXTRAS"].values)
    }
    return names(lists["CORE"]), extras


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports(path: Path) -> tuple[set[str], set[str]]:
    """(module-level, nested) top-level names of non-project, non-stdlib imports."""
    top, nested = set(), set()
    tree = ast.parse(path.read_text())
    module_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            if name in sys.stdlib_module_names or name in ("rlvr_jax", "__future__"):
                continue
            (top if id(node) in module_level else nested).add(name)
    return top, nested


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    # Scanning every installed distribution takes about a second: once.
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    mapping = _module_distributions()
    return {_normalise(d) for d in mapping.get(module, [module])}


def test_every_import_is_a_declared_dependency():
    core, extras = _declared()
    anywhere = core.union(*extras.values())
    missing = []
    for path in sorted((REPO / "rlvr_jax").rglob("*.py")):
        top, nested = _third_party_imports(path)
        extra = EXTRA_MODULES.get(path.stem)
        at_import = core | (extras[extra] if extra else set())
        for name in top:
            if not _distributions(name) & at_import:
                missing.append(f"{path.name}: `import {name}` at module level")
        for name in nested:
            if not _distributions(name) & anywhere:
                missing.append(f"{path.name}: `import {name}` in no extra")
    assert missing == []


def test_the_wheel_carries_the_paper_data(tmp_path):
    # Built from a copy: setuptools leaves a build/ tree next to setup.py.
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "rlvr_jax",
        src / "rlvr_jax",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("rlvr_jax-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    root = Path(paper_data.__file__).parent
    shipped = {
        "rlvr_jax/data/paper_data/" + str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert len(shipped) >= 15  # 12 eval files, 3 train files, SOURCES.md
    assert shipped - packed == set()
    # The planner's XLA:GPU target configs (`planning.chips.GPU_TARGETS`).
    targets = {"rlvr_jax/planning/gpu_targets/" + n for n in chips.GPU_TARGETS.values()}
    assert targets - packed == set()
