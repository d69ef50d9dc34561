"""π1 with PPO (a critic and GAE) instead of GRPO, as the paper ran it
through veRL.

Everything is configs/pi1.py's (this file starts from its `get_config`), with
one change to the recipe: algorithm.adv_estimator = "gae" (PPO: a critic, the policy's base
model with a fresh value head and its own AdamW, and GAE advantages). The KL
stays where pi1 has it, in the loss (loss.kl_coef = 0.001): the reference
script sets actor.use_kl_loss=True with kl_loss_coef=0.001, so veRL does not
also put the KL in the reward (algorithm.kl_in_reward stays False). The
critic's settings are veRL's defaults (ppo_trainer.yaml), already the base
config's: lr 1e-5 constant, AdamW (0.9, 0.999, eps 1e-8, weight decay 0.01),
gradient clip 1.0, value clip 0.5, no critic warm-up; γ = λ = 1.

One change to the memory layout: 128 decode slots (rollout.chunk_size)
instead of 256, so that the run fits a v5e-8 beside the critic's state.

The paper's own PPO settings text was not available to us: the settings
above are the reference script's π1 settings with veRL's PPO defaults, not
values read from the paper. Check them against it when it is at hand.

  python -m rlvr_jax.main --config=configs/ppo_pi1.py --workdir=/tmp/ppo_pi1 \\
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
  python -m rlvr_jax.plan --config=configs/ppo_pi1.py --topology=v5e:2x4
Laptop CPU (tiny random model): --config=configs/ppo_pi1.py:tiny
Takes the same arguments as configs/pi1.py (tiny, steps=..., ...).
"""

import importlib.util
import os


def _pi1_config(arg):
    """configs/pi1.py's config. Loaded by path: config files are read by path,
    with no `configs` package importable."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pi1.py")
    spec = importlib.util.spec_from_file_location("rlvr_jax_pi1_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    c = _pi1_config(arg)
    c.algorithm.adv_estimator = "gae"  # PPO: critic + GAE
    if not c.model.preset:
        # Memory layout, not recipe: on a v5e-8 the critic's train state
        # (2.3 GB per chip) leaves no room for pi1's 256 decode slots
        # (python -m rlvr_jax.plan --config=configs/ppo_pi1.py
        # --topology=v5e:2x4; docs/plan.md, "PPO").
        c.rollout.chunk_size = 128
        c.rollout.page_size = c.rollout.pages = 0  # slot caches
        c.rollout.prefill_chunk = 0
    return c
