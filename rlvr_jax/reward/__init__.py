"""The reward: the answer checker and the pool of processes that scores
rollouts. JAX-free (the learner never waits on it for anything but floats).

This package face holds the stable scoring API (`score_batch`, `RewardPool`,
`RewardKind`); the parts:

  checker.py  extract an answer, compare it with the gold one (`rlvr_jax.checker`)
  grading/    the checker's internals: lexer, parser, typed values, rules
  pool.py     worker processes under a per-answer deadline, killed on overrun;
              the reward kinds (the correct answer, or a control's reward)
"""

from rlvr_jax.reward.pool import (
    DEFAULT_TIMEOUT_S,
    KINDS,
    MAX_EXTRACTED_CHARS,
    RewardKind,
    RewardPool,
    ScoreResult,
    random_rewards,
    score_batch,
)
