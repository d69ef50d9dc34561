"""Experiment config files load from any directory, with only the package
importable (no sys.path edits, no `configs` package on the path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")

# Loads each file the way `--config=F:tiny` does (ml_collections' loader).
_LOAD = """
import json, sys
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config")
seeds = {}
for path in sys.argv[1:]:
    flags.FLAGS(["prog", f"--config={path}:tiny"])
    seeds[path] = flags.FLAGS.config.seed
    flags.FLAGS.unparse_flags()
print(json.dumps({"seeds": seeds, "configs_imported": "configs" in sys.modules}))
"""


def test_every_config_loads_by_absolute_path_from_another_directory(tmp_path):
    assert {p.name for p in CONFIGS} >= {"pi1.py", "pi13.py", "eval.py"}
    site = tmp_path / "site"  # stands for an installed rlvr_jax: the package only
    site.mkdir()
    (site / "rlvr_jax").symlink_to(REPO / "rlvr_jax", target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, *map(str, CONFIGS)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["seeds"]) == sorted(map(str, CONFIGS))
    assert all(isinstance(s, int) for s in out["seeds"].values())
    assert out["configs_imported"] is False
