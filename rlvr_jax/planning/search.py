"""The fit search: the largest sizes estimated to fit a plan's chips, and
overrides under which a run that does not fit does, each checked by a new
plan."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from rlvr_jax import sharding
from rlvr_jax.planning.programs import Run
from rlvr_jax.planning.report import Plan

# The phases whose rows are the learner's micro-batch (PPO's critic runs in
# the actor's micro-batches, `critic.CriticConfig.like`).
MICRO_BATCHED = (
    "ref_logprobs",
    "old_logprobs",
    "critic_values",
    "critic_step",
    "train_step",
)
# The phases whose backward pass the attention kernel's memory weighs on.
BACKWARD = ("train_step", "critic_step")


def _candidates(total: int, step: int) -> list[int]:
    """Sizes that are multiples of `step` and divide `total`, ascending."""
    return [c for c in range(step, total + 1, step) if total % c == 0]


def page_bytes(run: Run, page: int) -> int:
    """Bytes of one KV page (keys and values, every layer) on a chip."""
    m = run.model
    itemsize = np.dtype(run.settings.cache_dtype).itemsize
    return 2 * m.n_layers * m.n_kv_heads * m.head_dim * page * itemsize


def largest_sizes(run: Run, result: Plan) -> dict[str, int]:
    """Largest rollout.chunk_size (with a paged cache: rollout.pages, the
    pool's pages per chip) and train.micro_batch_size estimated to fit.

    With train.max_tokens_per_micro_batch set (it decides the micro-batch
    then, and micro_batch_size is unused), the micro-batch is offered as that
    budget: the fitting rows per chip times the widest learner row.

    A phase's temporaries and outputs are taken as proportional to the rows
    its program runs at once (the KV cache and activations are); the rest of
    the phase stays. A size must fit every phase it sets (the micro-batch:
    the log-prob passes and the update; PPO's critic, which runs in the
    actor's micro-batches, its value pass and its update too). Growing a
    size this way over-estimates its memory (the fixed part is scaled too), so the estimate errs towards fitting less; shrinking one
    under-estimates it, which is why `fitting_overrides` re-plans the
    suggestion before offering it.
    """
    sh, hbm = run.shapes, result.hbm_bytes_per_chip
    n = run.settings.n
    divisor = sharding.batch_divisor(run.mesh)
    rows = {
        "sample": sh.sample.slots,
        "eval_sample": sh.eval.slots if sh.eval else 1,
        **{name: sh.micro_batch for name in MICRO_BATCHED},
    }

    def fits(phases, size_of) -> bool:
        for name in phases:
            if name not in result.phases:
                continue
            prog = result.program(name)
            scaled = prog.temp + (prog.outputs if name.endswith("sample") else 0)
            size = size_of(name)
            if result.phases[name] - scaled + scaled * size / rows[name] > hbm:
                return False
        return True

    step = n * divisor // math.gcd(n, divisor)
    chunks = [
        c
        for c in _candidates(sh.responses, step)
        if fits(("sample",), lambda name, c=c: c)
    ]
    evals = [
        c
        for c in _candidates(sh.responses, divisor)
        if fits(("eval_sample",), lambda name, c=c: c)
    ]
    micros = [
        m
        for m in _candidates(sh.responses, divisor)
        if fits(MICRO_BATCHED, lambda name, m=m: m)
    ]
    micro = micros[-1] if micros else divisor
    paging = sh.sample.paging
    if paging is None:
        out = {"rollout.chunk_size": chunks[-1] if chunks else step}
    else:
        # A paged cache's memory is its pool (the slots hold a page table
        # each): the pages that fit beside the sampling phase's rest.
        per_page = page_bytes(run, paging.page)
        room = hbm - result.phases.get("sample", 0)
        out = {"rollout.pages": max(0, paging.pages + math.floor(room / per_page))}
    if run.token_budget:
        out["train.max_tokens_per_micro_batch"] = micro // divisor * sh.learner_width
    else:
        out["train.micro_batch_size"] = micro
    if "eval_sample" in result.phases:
        out["eval.chunk_size"] = evals[-1] if evals else divisor
    return out


def fitting_overrides(
    result: Plan,
    get: Callable[[str], Any],
    replan: Callable[[dict], Plan],
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Overrides under which the run fits, each checked by a new plan.

    Tries the largest chunk and micro-batch estimated to fit, then the
    estimates of that plan in turn (the estimate errs when shrinking, see
    `largest_sizes`); then the same with the KL reference kept in host memory
    (no numeric change), a halved learner head chunk (when the train step
    is over) and the einsum attention instead of the flash kernel (when the
    train step or PPO's critic step is over: the critic has the actor's
    kernel, and no LM head),
    params sharded over every chip (mesh.fsdp = -1), then sharded decode
    weights, each adding to the last. Returns {} when nothing fits.

    Args:
      result: the plan that does not fit.
      get: the run's config value of a dotted key ("train.logits_chunk").
      replan: the memory-only plan of the run under some overrides.
      log: progress lines.
    """
    hbm = result.hbm_bytes_per_chip

    def attempt(changes: dict, largest: dict, depth: int = 0) -> dict | None:
        current = {k: changes.get(k, get(k)) for k in largest}
        shrink = {k: v for k, v in largest.items() if v < current[k]}
        if depth and not shrink:
            return None  # nothing left to shrink: a re-plan would repeat
        changes = {**changes, **shrink}
        if not changes or depth > 3:
            return None
        log(f"re-planning with {changes}")
        p = replan(changes)
        if p.fits:
            return changes
        return attempt(changes, p.largest, depth + 1)

    layouts = [{}]
    if result.reference and not get("train.reference_on_host"):
        layouts.append({"train.reference_on_host": True})
    backward_over = any(result.phases.get(name, 0) > hbm for name in BACKWARD)
    if result.phases["train_step"] > hbm and get("train.logits_chunk") >= 256:
        # The update is over: halve its [rows, chunk, vocab] logits block
        # (left when the micro-batch is one row per chip already).
        chunk = get("train.logits_chunk") // 2
        layouts.append({**layouts[-1], "train.logits_chunk": chunk})
    if backward_over and result.attention_kernel == "flash":
        # The flash kernel's backward holds more per layer than the einsum
        # blocks (docs/plan.md): trade its speed for that memory.
        layouts.append({**layouts[-1], "model.attention": "xla"})
    if get("mesh.fsdp") != -1:
        layouts.append(
            {**layouts[-1], "mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1}
        )
    if get("rollout.decode_weights") != "sharded":
        layouts.append({**layouts[-1], "rollout.decode_weights": "sharded"})
    for layout in layouts:
        found = attempt(layout, result.largest if not layout else {})
        if found:
            return found
    return {}
