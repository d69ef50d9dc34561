"""A plain-numpy oracle of veRL's PPO critic math, for tests/test_gae.py.

Written from the reference run's veRL (github.com/ypwang61/One-Shot-RLVR:
verl/trainer/ppo/core_algos.py, ray_trainer.py, workers/critic/dp_critic.py,
workers/reward_manager/naive.py, utils/torch_functional.py) with explicit
loops over rows and time in float64. It shares nothing with
rlvr_jax.learner.gae, so agreement between the two means something; it is
slow and unvectorised on purpose.

Every [B, T] mask is a response mask whose valid entries are a prefix of
each row.
"""

from __future__ import annotations

import math

import numpy as np


def _lengths(mask) -> list[int]:
    mask = np.asarray(mask)
    return [
        int(sum(1 for t in range(mask.shape[1]) if mask[b, t]))
        for b in range(mask.shape[0])
    ]


def token_level_rewards(scores, mask) -> np.ndarray:
    """NaiveRewardManager: reward[i, valid_response_length - 1] = score."""
    mask = np.asarray(mask)
    out = np.zeros(mask.shape, np.float64)
    for b, length in enumerate(_lengths(mask)):
        out[b, length - 1] = float(scores[b])  # length 0 → index −1, as veRL
    return out


def _kl_one(logp: float, ref: float, kind: str) -> float:
    if kind == "kl":
        return logp - ref
    if kind == "abs":
        return abs(logp - ref)
    if kind == "mse":
        return 0.5 * (logp - ref) ** 2
    if kind == "low_var_kl":
        x = ref - logp
        return min(max(math.exp(x) - x - 1.0, -10.0), 10.0)
    raise NotImplementedError(kind)


def kl_in_reward(rewards, logp, ref_logp, mask, coef, kind):
    """apply_kl_penalty with a fixed β: (rewards − β·KL·mask, critic/kl)."""
    mask = np.asarray(mask)
    num_rows, num_cols = mask.shape
    out = np.array(rewards, np.float64)
    row_means = []
    for b in range(num_rows):
        total, count = 0.0, 0
        for t in range(num_cols):
            if mask[b, t]:
                kl = _kl_one(float(logp[b, t]), float(ref_logp[b, t]), kind)
                out[b, t] -= coef * kl
                total += kl
                count += 1
        # torch's masked mean of an empty row is 0/0: NaN, and so the metric.
        row_means.append(total / count if count else math.nan)
    return out, sum(row_means) / num_rows


def masked_mean(x, mask) -> float:
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                total += float(x[b, t])
                count += 1
    return total / count


def masked_var(x, mask) -> float:
    """Unbiased: mean of squared deviations times n / (n − 1)."""
    mean = masked_mean(x, mask)
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                total += (float(x[b, t]) - mean) ** 2
                count += 1
    return total / count * count / (count - 1)


def masked_whiten(x, mask, shift_mean=True) -> np.ndarray:
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    scale = 1.0 / math.sqrt(var + 1e-8)
    out = np.zeros(np.shape(x), np.float64)
    for b in range(out.shape[0]):
        for t in range(out.shape[1]):
            out[b, t] = (float(x[b, t]) - mean) * scale
            if not shift_mean:
                out[b, t] += mean
    return out


def critic_mask(mask) -> np.ndarray:
    """dp_critic's attention_mask[:, -T-1:-1]: the last prompt token (1), then
    the response mask without its last column."""
    mask = np.asarray(mask)
    out = np.zeros(mask.shape, bool)
    for b in range(mask.shape[0]):
        out[b, 0] = True
        for t in range(1, mask.shape[1]):
            out[b, t] = bool(mask[b, t - 1])
    return out


def gae(rewards, values, mask, gamma, lam):
    """compute_values' masking, then compute_gae_advantage_return."""
    mask = np.asarray(mask)
    num_rows, num_cols = mask.shape
    keep = critic_mask(mask)
    adv = np.zeros((num_rows, num_cols), np.float64)
    ret = np.zeros((num_rows, num_cols), np.float64)
    for b in range(num_rows):
        v = [float(values[b, t]) if keep[b, t] else 0.0 for t in range(num_cols)]
        last = 0.0
        for t in reversed(range(num_cols)):
            next_value = v[t + 1] if t + 1 < num_cols else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - v[t]
            last = delta + gamma * lam * last
            adv[b, t] = last
            ret[b, t] = last + v[t]
    return masked_whiten(adv, mask), ret


def value_loss(vpreds, returns, old_values, mask, cliprange_value):
    """compute_value_loss: 0.5 · token-mean of the larger squared error."""
    mask = np.asarray(mask)
    total, clipped, count = 0.0, 0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            v, r, old = (
                float(vpreds[b, t]),
                float(returns[b, t]),
                float(old_values[b, t]),
            )
            v_clip = max(min(v, old + cliprange_value), old - cliprange_value)
            err, err_clip = (v - r) ** 2, (v_clip - r) ** 2
            total += max(err, err_clip)
            clipped += err_clip > err
            count += 1
    return 0.5 * total / count, clipped / count


def explained_variance(returns, values, mask) -> float:
    """1 − var(R − V) / (var(R) + 1e-5), torch.var (unbiased) of the valid tokens."""
    valid_r, valid_diff = [], []
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                valid_r.append(float(returns[b, t]))
                valid_diff.append(float(returns[b, t]) - float(values[b, t]))

    def var(xs):
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)

    return 1.0 - var(valid_diff) / (var(valid_r) + 1e-5)
