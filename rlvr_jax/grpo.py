"""The learner's stable import path (GRPO's API): the learner package face.

`rlvr_jax.grpo` is the same module object as `rlvr_jax.learner` (not a copy), so
attributes, patches and caches are shared.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("rlvr_jax.learner")
