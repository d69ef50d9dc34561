"""The answer checker's stable import path and command line (`python -m rlvr_jax.checker`).

Imported, `rlvr_jax.checker` is the same module object as `rlvr_jax.reward.checker`;
run with `-m`, it runs that module's command line.
"""

import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("rlvr_jax.reward.checker").main())
sys.modules[__name__] = importlib.import_module("rlvr_jax.reward.checker")
