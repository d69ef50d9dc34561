"""Example selection's import path and command line (`python -m rlvr_jax.select`).

Imported, `rlvr_jax.select` is the same module object as `rlvr_jax.evaluation.select`;
run with `-m`, it runs that module's command line.
"""

import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("rlvr_jax.evaluation.select").cli())
sys.modules[__name__] = importlib.import_module("rlvr_jax.evaluation.select")
