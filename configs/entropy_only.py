"""The entropy-only ablation: π1 trained on the entropy term alone, no reward.

The paper's abstract (arXiv 2504.20571v2): "applying entropy loss alone,
without any outcome reward, enhances Qwen2.5-Math-1.5B's performance on
MATH500 by 27.4%". Its table row (Table 5, as cited below) could not be read
here; what the row kept comes from a replication with the reference code
(CityU Miao Lab, "Entropy Maximization Alone Can Improve LLM Reasoning
Performance", cityumiaolab.notion.site), which reproduced the paper's
"Table 5 (rows 0 and 10)": "Only the entropy loss is retained, and the
coefficients of policy loss and kl loss and weight decay are set to 0.0",
rollout temperature 0.6, "the same query" as the paper (π1). Hence:
pg_coef 0, kl_coef 0, weight decay 0, example π1. Not found, so ours is kept:
the entropy coefficient (0.001, the reference's default,
verl/trainer/config/ppo_trainer.yaml `entropy_coeff`) and the step
count (2,000; that replication's best MATH500 validation, 63.8% from 39.8%,
came at step 60). The reward is still computed and logged; with pg_coef 0 it
enters no gradient.
  python -m rlvr_jax.main --config=configs/entropy_only.py:paper_protocol \
      --workdir=/tmp/entropy_only --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (124,)  # π1
    c.loss.pg_coef = 0.0  # no policy-gradient term: the reward drives nothing
    c.loss.kl_coef = 0.0  # KL loss dropped (the replication above)
    c.optim.weight_decay = 0.0  # weight decay dropped (the replication above)
    return base.apply_arg(c, arg)
