"""The experiment config turned into the run's objects: the one module that
does it.

    config (ConfigDict) ──► tokenizer, ModelConfig, initial params
                        ──► mesh, LearnerConfig, optimizer, attention kernel
                        ──► sampling settings (training, in-loop evaluation,
                            benchmark evaluation), decode-weight placement
                        ──► examples, evaluation sets, the step's shapes

`train`, `sft`, `evaluate` and `plan` call these functions; the model,
rollout and learner packages never see the ConfigDict (they take the typed
objects made here). `plan_run` makes the planner's `Run` from the same
functions `train.run` uses, so the plan compiles the run's own objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from rlvr_jax import base_config, learner, sharding
from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib
from rlvr_jax import reward as reward_lib
from rlvr_jax.data import examples as data_lib
from rlvr_jax.data import paper_data
from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.learner import critic, gae, packing
from rlvr_jax.learner import optimizer as optimizer_lib
from rlvr_jax.model import decoder, flash
from rlvr_jax.model import params as params_lib
from rlvr_jax.planning import chips, programs
from rlvr_jax.rollout import decoding, engine, pagebook, paged_engine, sampling

# ------------------------------------------------------------------ model
RANDOM_PRESETS = ("tiny", "tiny_llama", "lab")  # random init, the tiny tokenizer
# Each random preset's own prompt format (`model.tiny_chat` overrides it).
TINY_CHATS = {"tiny": "qwen-math", "tiny_llama": "llama3", "lab": "qwen-math"}

# Hub model names (lower case, without the organisation) whose architecture
# the planner knows without their files: each maps to the `ModelConfig`
# preset built from that model's published config.json.
HUB_PRESETS = {
    "qwen2.5-math-1.5b": "qwen2_5_math_1_5b",
    "qwen2.5-math-1.5b-instruct": "qwen2_5_math_1_5b",
    "qwen2.5-math-7b": "qwen2_5_math_7b",
    "qwen2.5-7b": "qwen2_5_7b",
    "qwen2.5-0.5b": "qwen2_5_0_5b",
    "deepseek-r1-distill-qwen-1.5b": "deepseek_r1_distill_qwen_1_5b",
    "llama-3.2-3b-instruct": "llama3_2_3b_instruct",
}


def random_preset(config) -> tuple[Any, decoder.ModelConfig]:
    """(tokenizer, ModelConfig) of a random-init `model.preset`."""
    m = config.model
    if m.preset not in RANDOM_PRESETS:
        raise ValueError(f"unknown model.preset {m.preset!r} (known: {RANDOM_PRESETS})")
    tok = tokenizer_lib.build_tiny(chat=m.get("tiny_chat") or TINY_CHATS[m.preset])
    # model.remat is the learner's (LearnerConfig.remat), not the model's.
    model_config = getattr(decoder.ModelConfig, m.preset)(
        vocab_size=len(tok), eos_token_ids=tokenizer_lib.stop_token_ids(tok)
    ).replace(dtype=m.dtype, param_dtype=m.param_dtype)
    return tok, model_config


def tokenizer_and_model(config) -> tuple[Any, decoder.ModelConfig, str]:
    """(tokenizer, ModelConfig, HF dir or "") from the model section."""
    m = config.model
    if m.preset:
        return (*random_preset(config), "")
    # model.remat is the learner's (LearnerConfig.remat), not the model's.
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype)
    path = params_lib.resolve_model_path(m.path)
    tok = tokenizer_lib.load(path)
    model_config = params_lib.read_config(path, **overrides)
    eos = tokenizer_lib.merged_eos_ids(model_config.eos_token_ids, tok)
    return tok, model_config.replace(eos_token_ids=eos), path


def model_config(config) -> decoder.ModelConfig:
    """The run's `ModelConfig` without weights or a tokenizer on this host.

    `model.preset` names a `ModelConfig` constructor ('tiny', 'qwen2_5_7b',
    ...); a local HF directory is read; otherwise a hub id is matched to the
    preset of the same model (`HUB_PRESETS`: the paper's four models and a
    few other Qwen2.5 sizes).
    """
    m = config.model
    # model.remat is the learner's (LearnerConfig.remat), not the model's.
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype)
    if m.preset:
        if m.preset in RANDOM_PRESETS:  # sized by their tokenizer
            return random_preset(config)[1]
        return getattr(decoder.ModelConfig, m.preset)(**overrides)
    if os.path.isdir(m.path):
        return params_lib.read_config(m.path, **overrides)
    name = os.path.basename(m.path.rstrip("/")).lower()
    if name not in HUB_PRESETS:
        raise ValueError(
            f"model.path={m.path!r} is not a local directory and not a known "
            f"hub id ({sorted(HUB_PRESETS)}); pass --config.model.preset"
        )
    return getattr(decoder.ModelConfig, HUB_PRESETS[name])(**overrides)


def initial_params(config, model_config, hf_path, shardings):
    """The weights the run starts from (also the KL reference), in `shardings`.

    Order (docs/architecture.md): an explicit `checkpoint.resume_from`, else
    the pretrained HF weights, else a random init from `config.seed`. (A
    workdir's own checkpoint, which comes first, is `start_state`'s.)
    """
    if config.checkpoint.resume_from:
        try:
            saved_config, params = ckpt_lib.load_params(
                config.checkpoint.resume_from, shardings=shardings
            )
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds
            raise ValueError(
                f"checkpoint.resume_from={config.checkpoint.resume_from!r} is "
                f"unreadable ({e!r})"
            ) from e
        if architecture(saved_config) != architecture(model_config):
            raise ValueError(
                f"checkpoint.resume_from={config.checkpoint.resume_from!r} holds a "
                f"different architecture: {saved_config}"
            )
        return params
    if hf_path:
        _, params = params_lib.load_hf(
            hf_path,
            jnp.dtype(model_config.param_dtype),
            compute_dtype=model_config.dtype,
            shardings=shardings,
        )
        return params
    init = lambda key: decoder.init_params(model_config, key)
    return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))


def architecture(c: decoder.ModelConfig) -> decoder.ModelConfig:
    """The config with run-time choices (dtypes, remat, attention kernel, stop
    tokens) blanked."""
    return c.replace(
        dtype="float32",
        param_dtype="float32",
        remat=False,
        attention_kernel="xla",
        eos_token_ids=(),
    )


# ------------------------------------------------------------------- mesh
def mesh(config, devices: Sequence | None = None) -> jax.sharding.Mesh:
    """The run's device mesh (`mesh.data`, `mesh.fsdp`, `mesh.tensor`)."""
    return sharding.make_mesh(
        data=config.mesh.data,
        fsdp=config.mesh.fsdp,
        tensor=config.mesh.tensor,
        devices=devices,
    )


# ------------------------------------------------------------------- data
def train_examples(config) -> list[data_lib.Example]:
    d = config.data
    if d.train_path:
        examples = data_lib.load_examples(d.train_path)
        if d.indices:
            examples = data_lib.select(examples, list(d.indices))
    elif d.indices:
        # Without a pool the built-in task would silently replace the chosen
        # examples: a 1.5B run would train on "3 + 4" instead of π1.
        raise ValueError(
            f"data.indices={tuple(d.indices)} selects examples from a pool, but "
            "data.train_path is empty; set --config.data.train_path=dsr_sub (the "
            "packaged pool) or a file, or --config.data.indices='()' for the "
            "built-in task"
        )
    else:
        examples = data_lib.builtin_task()
    if d.label_override:  # before replication: every copy carries the new label
        overrides = label_overrides(config)
        try:
            examples = data_lib.override_labels(examples, overrides)
        except ValueError as e:
            raise ValueError(f"data.label_override={d.label_override!r}: {e}") from None
    if d.replicate:
        examples = data_lib.replicate(examples, d.replicate)
    return examples


def label_overrides(config) -> dict[int, str]:
    """`data.label_override` parsed: {example index: the label it trains on}.

    Raises:
      ValueError: one line naming the key and the malformed entry.
    """
    spec = config.data.label_override
    try:
        return data_lib.parse_label_override(spec)
    except ValueError as e:
        raise ValueError(f"data.label_override={spec!r}: {e}") from None


def eval_name(path: str) -> str:
    if path == "builtin" or path in paper_data.FILES:
        return path
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent or os.path.splitext(os.path.basename(path))[0]


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One held-out set of `eval.path`: its metric name, examples, prompt ids."""

    name: str
    examples: list[data_lib.Example]
    prompts: list[list[int]]


def eval_sets(config, tokenizer) -> list[EvalSet]:
    """The sets `eval.path` names (comma-separated), each logged on its own.

    Raises:
      ValueError: when two sets would log under the same name.
    """
    sets = []
    for path in filter(None, (p.strip() for p in config.eval.path.split(","))):
        if path == "builtin":
            examples = data_lib.builtin_task()
        else:
            examples = data_lib.load_examples(path)
        if config.eval.max_examples:
            examples = examples[: config.eval.max_examples]
        prompts = data_lib.encode_prompts(
            tokenizer, examples, config.data.max_prompt_len
        )
        sets.append(EvalSet(eval_name(path), examples, prompts))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(
            f"eval.path={config.eval.path!r}: two sets share a metric name "
            f"({names}); a file is named by its parent directory"
        )
    return sets


def eval_example_count(config) -> tuple[int, str]:
    """(examples evaluated each time, where the number comes from).

    `eval.path` may name several sets, comma-separated (`eval_sets`):
    they are sampled together, so their counts add up.
    """
    e = config.eval
    if not e.every:
        return 0, "eval.every = 0"
    paths = [p.strip() for p in e.path.split(",") if p.strip()] or [e.path]
    total, sources = 0, []
    for path in paths:
        count, source = _eval_set_count(path)
        total += min(count, e.max_examples) if e.max_examples else count
        sources.append(source)
    return total, ",".join(sources)


def _eval_set_count(path: str) -> tuple[int, str]:
    """(examples, source) of one evaluation set, read as the run reads it."""
    if path == "builtin":
        return len(data_lib.builtin_task()), "the built-in task"
    try:
        # A path, a packaged name (math500) or a cached hub id.
        source = data_lib.resolve_source(path) if path else ""
    except FileNotFoundError:
        source = ""
    if source:
        return len(data_lib.load_examples(source)), path
    # The paper's run validates on MATH500 (docs/recipe.md).
    return 500, f"eval.path={path!r} not found here: MATH500's 500 assumed"


# ------------------------------------------------------------- validation
# Above this the optimizer's step outgrows what RL fine-tuning of a
# pretrained model uses (the paper's 1e-6; the laptop lab's 1e-4; a tiny
# random model's 3e-3): a likely typo, said but not refused.
LR_WARN = 1e-2


def check_config(config) -> list[str]:
    """Checks that need no model or devices, run before anything is read or
    written; returns warnings to print.

    Raises:
      ValueError: one line naming the key and the fix.
    """
    m, o = config.model, config.optim
    if m.preset and m.path:
        raise ValueError(
            f"model.preset={m.preset!r} and model.path={m.path!r} are both set: "
            "pass --config.model.path='' for the random preset, or "
            "--config.model.preset='' to load the path"
        )
    if not o.lr > 0:  # NaN too
        raise ValueError(
            f"optim.lr={o.lr} must be positive (a negative rate ascends the loss)"
        )
    if config.checkpoint.every <= 0:
        raise ValueError(
            f"checkpoint.every={config.checkpoint.every} must be a positive "
            "number of steps (set it above train.steps to save only at the end)"
        )
    if config.eval.every < 0:
        raise ValueError(f"eval.every={config.eval.every}: 0 (none) or a step count")
    if config.train.max_skipped_updates < 1:
        raise ValueError(
            f"train.max_skipped_updates={config.train.max_skipped_updates} must be "
            ">= 1"
        )
    rw = config.reward
    if rw.kind not in reward_lib.KINDS:
        raise ValueError(
            f"reward.kind={rw.kind!r} must be one of {', '.join(reward_lib.KINDS)}"
        )
    for key in ("random_p", "format_value"):
        if not 0 <= rw[key] <= 1:  # NaN too
            raise ValueError(f"reward.{key}={rw[key]} must be in [0, 1]")
    check_algorithm(config)
    decode_tensor(config)  # a bad layout name is one line, before any work
    if config.log.samples_every < 0 or config.log.samples_count < 1:
        raise ValueError(
            f"log.samples_every={config.log.samples_every} must be >= 0 (0: off) "
            f"and log.samples_count={config.log.samples_count} >= 1"
        )
    warnings = []
    if o.lr > LR_WARN:
        warnings.append(
            f"warning: optim.lr={o.lr:g} is above {LR_WARN:g}, far above RL "
            "fine-tuning rates (the paper: 1e-6); the run goes on"
        )
    # A malformed spec fails here, before any work; a good one is said.
    warnings += [
        f"note: data.label_override: example {index} trains on the label {label!r} "
        "instead of its own"
        for index, label in label_overrides(config).items()
    ]
    return warnings


ADV_ESTIMATORS = ("grpo", "gae")


def check_algorithm(config) -> None:
    """`algorithm.*` and `critic.*` as veRL reads them (ValueError otherwise)."""
    a, c = config.algorithm, config.critic
    if a.adv_estimator not in ADV_ESTIMATORS:
        raise ValueError(
            f"algorithm.adv_estimator={a.adv_estimator!r} must be one of "
            f"{', '.join(ADV_ESTIMATORS)}"
        )
    for key in ("gamma", "lam"):
        if not 0 <= a[key] <= 1:  # NaN too
            raise ValueError(f"algorithm.{key}={a[key]} must be in [0, 1]")
    if a.kl_in_reward:
        if a.adv_estimator != "gae":
            raise ValueError(
                "algorithm.kl_in_reward needs algorithm.adv_estimator='gae' (GRPO "
                "here takes the KL in its loss: loss.kl_coef)"
            )
        if config.loss.kl_coef:
            raise ValueError(
                f"algorithm.kl_in_reward with loss.kl_coef={config.loss.kl_coef}: "
                "veRL applies the KL in the reward or in the loss, not both; set "
                "--config.loss.kl_coef=0"
            )
        if a.kl_penalty not in gae.KL_IN_REWARD_KINDS:
            raise ValueError(
                f"algorithm.kl_penalty={a.kl_penalty!r} must be one of "
                f"{', '.join(gae.KL_IN_REWARD_KINDS)}"
            )
        if not a.kl_ctrl.kl_coef >= 0:
            raise ValueError(f"algorithm.kl_ctrl.kl_coef={a.kl_ctrl.kl_coef} < 0")
    if uses_critic(config):
        if not c.optim.lr > 0:
            raise ValueError(f"critic.optim.lr={c.optim.lr} must be positive")
        if not c.cliprange_value > 0:
            raise ValueError(f"critic.cliprange_value={c.cliprange_value} must be > 0")
        if c.warmup < 0:
            raise ValueError(f"critic.warmup={c.warmup} must be >= 0")


def uses_critic(config) -> bool:
    """PPO with a critic (`algorithm.adv_estimator = "gae"`)."""
    return config.algorithm.adv_estimator == "gae"


def uses_reference(config) -> bool:
    """Whether the frozen reference policy is kept: a KL term in the loss or
    in the reward."""
    return bool(config.loss.kl_coef) or (
        uses_critic(config) and bool(config.algorithm.kl_in_reward)
    )


def validate(config, model_config: decoder.ModelConfig, mesh) -> None:
    """Config checks that must pass before anything touches the workdir."""
    t, r, d = config.train, config.rollout, config.data
    responses = t.batch_size * r.n
    divisor = sharding.batch_divisor(mesh)
    if t.batch_size <= 0 or r.n <= 0:
        raise ValueError("train.batch_size and rollout.n must be positive")
    if responses % divisor:
        raise ValueError(
            f"train.batch_size × rollout.n = {responses} responses do not split "
            f"over the mesh's data×fsdp = {divisor} devices"
        )
    if responses % t.micro_batch_size:
        raise ValueError(
            f"train.micro_batch_size={t.micro_batch_size} does not divide the "
            f"{responses} responses of a step"
        )
    if t.micro_batch_size % divisor:
        raise ValueError(
            f"train.micro_batch_size={t.micro_batch_size} does not split over "
            f"data×fsdp = {divisor} devices"
        )
    attention_kernel(config, mesh, model_config)  # raises on a bad choice
    tensor = decode_tensor(config)
    if tensor:  # explicit: T must fit the devices and their hosts
        sharding.decode_mesh(mesh, tensor)
    longest = max(d.prompt_buckets) + max(r.max_new_tokens, config.eval.max_new_tokens)
    if d.max_prompt_len > max(d.prompt_buckets):
        raise ValueError(
            f"data.max_prompt_len={d.max_prompt_len} exceeds the largest prompt "
            f"bucket {max(d.prompt_buckets)}"
        )
    if longest > model_config.max_seq_len:
        raise ValueError(
            f"prompt bucket {max(d.prompt_buckets)} + response "
            f"{max(r.max_new_tokens, config.eval.max_new_tokens)} tokens = {longest} "
            f"exceeds the model's context of {model_config.max_seq_len}"
        )
    if t.steps < 0:
        raise ValueError(f"train.steps must be >= 0, got {t.steps}")
    if t.logits_chunk <= 0:
        raise ValueError(f"train.logits_chunk must be positive, got {t.logits_chunk}")


# Keys a resumed run may change without saying so: how long it runs, how
# often it evaluates, saves and logs, and how its work is laid out in memory
# (what `rlvr_jax.plan` suggests changing), none of which changes what it
# computes.
RESUMABLE_KEYS = (
    "train.steps",
    "eval.every",
    "eval.chunk_size",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.export_hf_every",
    "checkpoint.async_save",
    "log.*",
    "resume.*",
    "mesh.*",
    "model.attention",
    "model.remat",
    "rollout.chunk_size",
    "rollout.decode_weights",
    "rollout.decode_mesh",
    "rollout.page_size",
    "rollout.pages",
    "rollout.prefill_chunk",
    "train.micro_batch_size",
    "train.max_tokens_per_micro_batch",
    "train.logits_chunk",
    "train.reference_on_host",
    "train.max_skipped_updates",
)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(key: str, patterns) -> bool:
    return any(
        key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in patterns
    )


def config_changes(config, saved: dict) -> list[str]:
    """The keys whose values differ from the `saved` config (a run's first
    launch, as JSON), other than `RESUMABLE_KEYS` and those named in
    `resume.allow_changes`, each as "key: saved -> now"."""
    now = _flat(json.loads(config.to_json_best_effort()))
    # A key added to the project after the run's first launch holds its
    # default there: the run was made under that default.
    before = {
        **_flat(json.loads(base_config.base_config().to_json_best_effort())),
        **_flat(saved),
    }
    allowed = list(RESUMABLE_KEYS) + [
        k.strip() for k in config.resume.allow_changes.split(",") if k.strip()
    ]
    return [
        f"{key}: {before.get(key, '(absent)')!r} -> {now.get(key, '(absent)')!r}"
        for key in sorted(set(now) | set(before))
        if now.get(key) != before.get(key) and not _matches(key, allowed)
    ]


def check_resume(config, workdir: str) -> None:
    """Refuses to resume a workdir's checkpoints under a config that changes
    the run's meaning (`config_changes` against the workdir's first launch).

    Raises:
      ValueError: one line with the differences and the override that
        accepts them.
    """
    saved_path = epath.Path(workdir) / io_lib.CONFIG_FILE
    if not ckpt_lib.available_steps(workdir) or not saved_path.exists():
        return  # nothing to resume: the run starts over
    try:
        saved = json.loads(saved_path.read_text())
    except ValueError as e:
        raise ValueError(f"{saved_path} is not readable JSON ({e})") from None
    changes = config_changes(config, saved)
    if changes:
        keys = ",".join(c.split(":")[0] for c in changes)
        raise ValueError(
            f"{workdir} holds a run started with another config ("
            + "; ".join(changes)
            + f"): resume with --config.resume.allow_changes={keys} to accept "
            "the change, or use another --workdir"
        )


# ---------------------------------------------------------------- learner
def learner_width(config) -> int:
    """The widest learner row: the largest prompt bucket + the longest response."""
    return max(config.data.prompt_buckets) + config.rollout.max_new_tokens


def learner_config(config, mesh=None, model=None) -> learner.LearnerConfig:
    """The loss and learner settings.

    The micro-batch token budget (per device) is train.max_tokens_per_micro_batch
    or, when that is 0 and the mesh is given, micro_batch_size rows of the
    widest learner row shared over the data×fsdp devices: the same per-device
    memory as an unpacked micro-batch of micro_batch_size rows.
    """
    c = config.loss
    max_tokens = config.train.max_tokens_per_micro_batch or None
    if max_tokens is None and mesh is not None:
        per_device = config.train.micro_batch_size // sharding.batch_divisor(mesh)
        max_tokens = max(1, per_device) * learner_width(config)
    return learner.LearnerConfig(
        temperature=config.rollout.temperature,
        clip_eps=c.clip_eps,
        clip_eps_high=c.clip_eps_high,
        kl_coef=c.kl_coef,
        kl_type=c.kl_type,
        entropy_coef=c.entropy_coef,
        pg_coef=c.pg_coef,
        agg=c.agg,
        micro_batch_size=config.train.micro_batch_size,
        max_tokens_per_micro_batch=max_tokens,
        recompute_old_logp=config.train.recompute_old_logp,
        remat=config.model.remat,
        logits_chunk=config.train.logits_chunk,
        attention_kernel=attention_kernel(config, mesh, model),
    )


ATTENTION_CHOICES = ("auto", *decoder.ATTENTION_KERNELS)


def attention_kernel(config, mesh=None, model=None) -> str:
    """The learner's `ModelConfig.attention_kernel` for `model.attention`.

    "auto" is "flash" on TPUs where the kernel takes whole learner rows
    (`flash.supports`: the model's head dim, the widest learner row, the
    chip), else "xla" (no mesh: "xla"). An explicit "flash" off TPU is
    refused here, before anything is built: the kernel compiles for TPUs
    only.
    """
    choice = config.model.get("attention", "auto")
    if choice not in ATTENTION_CHOICES:
        raise ValueError(
            f"model.attention={choice!r}: expected one of {ATTENTION_CHOICES}"
        )
    platform = mesh.devices.flat[0].platform if mesh is not None else None
    if choice == "flash" and platform not in (None, "tpu"):
        raise ValueError(
            f"model.attention='flash' needs TPU devices, not {platform!r}: "
            "use 'auto' or 'xla'"
        )
    if choice != "auto":
        return choice
    if platform != "tpu":
        return "xla"
    head_dim = model.head_dim if model is not None else flash.LANES
    kind = mesh.devices.flat[0].device_kind
    tiles = flash.supports(head_dim, learner_width(config), kind)
    return "flash" if tiles else "xla"


def optimizer(config):
    """AdamW with the recipe's schedule, from `optim.*`."""
    o = config.optim
    return _adamw(
        o,
        first_step_zero_lr=o.first_step_zero_lr,
        decay_steps=o.decay_steps,
        decay_norms_and_biases=o.decay_norms_biases,
        grad_clip=o.grad_clip or None,
    )


def critic_optimizer(config):
    """The critic's AdamW (`critic.optim.*`, `critic.grad_clip`): veRL's
    critic optimizer, constant rate after an optional linear warm-up."""
    return _adamw(
        config.critic.optim,
        # veRL's critic has the actor's scheduler (get_constant_schedule_with_
        # warmup), hence the same lr-0 first update when the quirk is asked for.
        first_step_zero_lr=config.optim.first_step_zero_lr,
        grad_clip=config.critic.grad_clip or None,
    )


def _adamw(o, **more):
    """`optimizer_lib.adamw` from a config section's lr, b1, b2, eps,
    weight_decay and warmup_steps, and `more`."""
    return optimizer_lib.adamw(
        o.lr,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_steps,
        **more,
    )


def critic_lr_schedule(config):
    """The critic's learning rate by applied update."""
    o = config.critic.optim
    return optimizer_lib.schedule(
        o.lr, o.warmup_steps, config.optim.first_step_zero_lr, 0
    )


def critic_config(config, learner_cfg: learner.LearnerConfig) -> critic.CriticConfig:
    """The critic's settings: its value clip, the actor's micro-batches."""
    return critic.CriticConfig.like(learner_cfg, config.critic.cliprange_value)


def lr_schedule(config):
    """The learning rate by applied update (what the optimizer follows)."""
    o = config.optim
    return optimizer_lib.schedule(
        o.lr, o.warmup_steps, o.first_step_zero_lr, o.decay_steps
    )


# --------------------------------------------------------------- sampling
def sampling_settings(config, model: decoder.ModelConfig, pad_id: int = 0):
    """The training rollout's `SamplingSettings` (`rollout.*`), checked
    against the model's vocabulary."""
    r = config.rollout
    settings = sampling.SamplingSettings(
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        eos_ids=model.eos_token_ids,
        n=r.n,
        cache_dtype=r.cache_dtype,
        pad_id=pad_id,
    )
    settings.check_against(model)
    return settings


def eval_sampling_settings(config, model: decoder.ModelConfig, pad_id: int = 0):
    """The in-loop evaluation's `SamplingSettings`: greedy, one response per
    prompt, `eval.max_new_tokens` (at least 1: an SFT run may set 0 to skip
    the greedy answers)."""
    return sampling.SamplingSettings(
        max_new_tokens=max(1, config.eval.max_new_tokens),
        temperature=0.0,
        eos_ids=model.eos_token_ids,
        cache_dtype=config.rollout.cache_dtype,
        pad_id=pad_id,
    )


def benchmark_sampling_settings(config, protocol, eos_ids, pad_id: int = 0):
    """A benchmark evaluation's `SamplingSettings`: the benchmark's protocol
    (`suites.Protocol`: max_new_tokens, temperature, top_p, top_k, n) with
    the eval config's `sampling.cache_dtype`."""
    return sampling.SamplingSettings(
        max_new_tokens=protocol.max_new_tokens,
        temperature=protocol.temperature,
        top_p=protocol.top_p,
        top_k=protocol.top_k,
        eos_ids=eos_ids,
        n=protocol.n,
        cache_dtype=config.sampling.cache_dtype,
        pad_id=pad_id,
    )


def decode_weights_sharding(config, mesh, model_config=None, hbm_bytes=None):
    """Placement of the sampler's decode weights (`rollout.decode_weights`).

    "replicated": a compute-dtype copy on every chip (decode steps read local
    weights); "sharded": split as the params are (None: the compiler follows
    them; each step gathers what it multiplies); "auto": replicated when that
    copy takes at most a quarter of a chip's memory (`hbm_bytes`, default:
    what the mesh's first device reports), else sharded; replicated when the
    memory (CPU) or the model is unknown. A quarter leaves the train state, the reference
    and the KV cache room: π1's 1.5B copy is 18% of a v5e chip, a 7B copy 88%.
    """
    choice = config.rollout.decode_weights
    if choice == "auto":
        choice = "replicated"
        if hbm_bytes is None:
            try:
                stats = mesh.devices.flat[0].memory_stats() or {}
            except jax.errors.JaxRuntimeError:  # a compile-only device
                stats = {}
            hbm_bytes = stats.get("bytes_limit")
        if hbm_bytes and model_config is not None:
            copy = decoder.count_params(decoder.abstract_params(model_config))
            copy *= jnp.dtype(model_config.dtype).itemsize
            if copy > hbm_bytes / 4:
                choice = "sharded"
    if choice == "replicated":
        return sharding.replicated(mesh)
    if choice == "sharded":
        return None  # as the params are
    raise ValueError(
        f"rollout.decode_weights={choice!r}: expected 'auto', 'replicated' or 'sharded'"
    )


DECODE_MESH_CHOICES = (
    "auto",
    "data",
    *(f"tensor={t}" for t in sharding.DECODE_TENSOR_SIZES),
)


def decode_tensor(config) -> int | None:
    """T of `rollout.decode_mesh`: 1 for "data", T for "tensor=T", None for
    "auto" (ValueError, one line, for anything else or a clash with
    `rollout.decode_weights`)."""
    choice = config.rollout.decode_mesh
    if choice not in DECODE_MESH_CHOICES:
        raise ValueError(
            f"rollout.decode_mesh={choice!r}: expected one of "
            f"{', '.join(map(repr, DECODE_MESH_CHOICES))}"
        )
    if choice == "auto":
        return None
    tensor = 1 if choice == "data" else int(choice.split("=")[1])
    if tensor > 1 and config.rollout.decode_weights == "sharded":
        raise ValueError(
            f"rollout.decode_weights='sharded' with rollout.decode_mesh={choice!r}: "
            "the tensor layout places the decode weights itself; set "
            "--config.rollout.decode_weights=auto or --config.rollout.decode_mesh=data"
        )
    return tensor


def decode_weight_bytes(model_config, tensor: int) -> int:
    """Bytes per chip of the compute-dtype decode weights split over `tensor`
    chips by `sharding.DECODE_RULES` (tensor=1: the whole copy)."""
    mesh = jax.sharding.AbstractMesh(
        (1, 1, tensor), sharding.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    packed = jax.eval_shape(
        lambda p: decoding.pack(model_config, p),
        decoder.abstract_params(model_config),
    )
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(packed):
        spec = sharding.spec_for(
            sharding.path_str(path), leaf.shape, mesh, sharding.DECODE_RULES
        )
        shard = [
            d // (tensor if e is not None else 1)
            for d, e in zip(leaf.shape, tuple(spec) + (None,) * leaf.ndim)
        ]
        total += int(np.prod(shard)) * jnp.dtype(model_config.dtype).itemsize
    return total


def sampler_cache_bytes(config, model_config, mesh, tensor: int) -> int:
    """Bytes per chip of the rollout's KV cache (rollout.chunk_size slots of
    the widest prompt bucket + max_new_tokens) on a decode mesh of `tensor`:
    the slots split over devices / T chips (the cache is not split over
    'tensor')."""
    width = max(config.data.prompt_buckets) + config.rollout.max_new_tokens
    per_row = 2 * model_config.n_layers * model_config.n_kv_heads
    per_row *= model_config.head_dim * width
    per_row *= jnp.dtype(config.rollout.cache_dtype).itemsize
    chips = mesh.devices.size // tensor
    return -(-config.rollout.chunk_size // chips) * per_row


def paging(config, settings, divisor: int):
    """The training rollout's paged KV cache (`rollout.page_size`,
    `rollout.pages`), or None for slot caches.

    `rollout.pages` 0 gives each of the `divisor` devices of the batch axes
    the pages its share of `rollout.chunk_size` slots needs for the widest
    responses (never preempts); `rlvr_jax.plan` reports how many fit.
    """
    page, pages = config.rollout.page_size, config.rollout.pages
    if page < 0 or pages < 0:
        raise ValueError(
            f"rollout.page_size={page}, rollout.pages={pages}: both must be >= 0"
        )
    if not page:
        if pages:
            raise ValueError(
                "rollout.pages is set but rollout.page_size is 0 (slot caches); "
                "give a page size to use a paged cache"
            )
        return None
    if not pages:
        slots = -(-config.rollout.chunk_size // divisor)
        pages = slots * pagebook.own_pages(page, settings.max_new_tokens)
    return paged_engine.Paging(
        page=page, pages=pages, prefill_chunk=config.rollout.prefill_chunk
    )


def decode_layout(config, mesh, model_config=None, hbm_bytes=None):
    """The sampler's decode mesh and decode-weight placement:
    (`rollout.decode_mesh`, its tensor size T, `decode_sharding`).

    "data": the learner's mesh, the weights placed by
    `decode_weights_sharding` (today's data-parallel replicas). "tensor=T":
    `sharding.decode_mesh(mesh, T)` (the same devices, T of a host per
    tensor group) and the weights split by `sharding.DECODE_RULES` (a pytree
    of shardings for `sampling.prepare`). "auto", a rule without compiling:
    "data" while a replicated copy takes at most a quarter of a chip (as
    `decode_weights=auto`), else the smallest T whose split copy takes at
    most a quarter and whose copy and KV cache (T× a data layout's per chip,
    the cache being split over rows only) at most half; "data" otherwise
    (then with sharded weights), and when the memory or the model is not
    known. `python -m rlvr_jax.plan` compiles and compares the layouts.

    Raises:
      ValueError: a bad `rollout.decode_mesh`, or T that does not fit the
        devices or their hosts (one line).
    """
    tensor = decode_tensor(config)
    if tensor is None:
        tensor = 1
        hbm_bytes = _mesh_hbm(mesh) if hbm_bytes is None else hbm_bytes
        if hbm_bytes and model_config is not None:
            if decode_weight_bytes(model_config, 1) > hbm_bytes / 4:
                tensor = _smallest_tensor(config, mesh, model_config, hbm_bytes)
    if tensor == 1:
        return (
            mesh,
            1,
            decode_weights_sharding(config, mesh, model_config, hbm_bytes),
        )
    if model_config is None:
        raise ValueError("rollout.decode_mesh: a tensor layout needs the model")
    dmesh = sharding.decode_mesh(mesh, tensor)
    packed = jax.eval_shape(
        lambda p: decoding.pack(model_config, p),
        decoder.abstract_params(model_config),
    )
    return dmesh, tensor, sharding.decode_shardings(packed, dmesh)


def _smallest_tensor(config, mesh, model_config, hbm_bytes) -> int:
    per_host = sharding.devices_per_host(mesh.devices)
    for tensor in sharding.DECODE_TENSOR_SIZES:
        if mesh.devices.size % tensor or tensor > per_host:
            continue
        weights = decode_weight_bytes(model_config, tensor)
        cache = sampler_cache_bytes(config, model_config, mesh, tensor)
        if weights <= hbm_bytes / 4 and weights + cache <= hbm_bytes / 2:
            return tensor
    return 1


def _mesh_hbm(mesh) -> float | None:
    try:
        stats = mesh.devices.flat[0].memory_stats() or {}
    except jax.errors.JaxRuntimeError:  # a compile-only device
        stats = {}
    return stats.get("bytes_limit")


def benchmark_call_prompts(config, protocol, problems: int) -> int:
    """Prompts per sampler call of a benchmark evaluation of `problems`
    problems: as many as fill `sampling.chunk_rows` responses (at least one),
    at most the problems. Every call of a width is padded to this many, so it
    runs one program."""
    return max(1, min(config.sampling.chunk_rows // protocol.n, problems))


# ------------------------------------------------------------- train state
def start_state(checkpointer, model: decoder.ModelConfig, tx, mesh, params):
    """The train state a run starts from, and where: (state, step, meta).

    The workdir's newest intact checkpoint when there is one (meta: its data
    iterator position and history), else a fresh state from `params` (step
    0, meta None). A damaged newer step (unreadable, arrays that differ from
    their saved digests, non-finite values) is skipped with one console line
    and left in place (`Checkpointer.restore_verified`): a disk fault costs
    the steps since the previous checkpoint, not the run.

    Raises:
      ValueError: there are checkpoints, but none is intact (each step's
        reason is named).
    """
    state, _, start, meta = start_states(checkpointer, model, tx, mesh, params)
    return state, start, meta


CRITIC_ITEM = "critic"  # the critic's train state among a checkpoint's items


def start_states(
    checkpointer,
    model: decoder.ModelConfig,
    tx,
    mesh,
    params,
    critic_tx=None,
    critic_rng=None,
):
    """`start_state` with PPO's critic: (state, critic_state, step, meta).

    With `critic_tx` the critic's train state is restored from the same
    checkpoint (its `CRITIC_ITEM` item, verified with the rest) or, on a
    fresh start, made from `params` (the policy's base weights) and a value
    head drawn from `critic_rng`; without it critic_state is None.
    """
    critic_state = None
    if checkpointer.latest_step() is None:
        return _fresh_states(model, tx, mesh, params, critic_tx, critic_rng)
    abstract = learner.sharded_abstract_state(model, tx, mesh)
    rest = {k: v for k, v in abstract._asdict().items() if k != "params"}
    if critic_tx is not None:
        # Saved as a dict (train.run's `save`): orbax restores dicts as dicts.
        abstract_critic = critic.sharded_abstract_state(model, critic_tx, mesh)
        rest[CRITIC_ITEM] = abstract_critic._asdict()
    found = checkpointer.restore_verified(abstract.params, rest)
    if found is None:  # the steps vanished since `latest_step` (moved aside)
        return _fresh_states(model, tx, mesh, params, critic_tx, critic_rng)
    start, restored, items, meta = found
    if critic_tx is not None:
        critic_state = critic.CriticState(**items.pop(CRITIC_ITEM))
    return learner.TrainState(params=restored, **items), critic_state, start, meta


def _fresh_states(model, tx, mesh, params, critic_tx, critic_rng):
    state = learner.init_train_state(model, tx, mesh, params=params)
    critic_state = None
    if critic_tx is not None:
        critic_state = critic.init_state(
            model, critic_tx, mesh, critic_rng, policy_params=params
        )
    return state, critic_state, 0, None


# ------------------------------------------------------------------ shapes
def eval_chunk(config, eval_examples: int) -> int:
    """Prompts per in-loop evaluation call: `eval.chunk_size`, at most the
    examples (the calls' shape; the last call's prompts are padded to it)."""
    return max(1, min(config.eval.chunk_size, eval_examples))


def step_shapes(
    config, mesh, eval_examples: int, settings, learner_cfg, decode_mesh=None
) -> programs.StepShapes:
    """The sizes of one RL step under `config` on `mesh`, worst case (the
    widest prompt bucket, every response at max_new_tokens), by the rules
    the components run by: `engine.rollout_shape` for the rollouts (split
    over `decode_mesh`'s batch axes, default `mesh`'s, as `engine.rollout`
    splits them), `packing.abstract_batch` for the learner batch."""
    divisor = sharding.batch_divisor(mesh)
    rows_divisor = sharding.batch_divisor(decode_mesh or mesh)
    width = max(config.data.prompt_buckets)
    batch = config.train.batch_size
    new = config.rollout.max_new_tokens
    layout = packing.abstract_batch(
        batch * settings.n,
        width + new,
        new,
        max_tokens=learner_cfg.max_tokens_per_micro_batch,
        divisor=divisor,
        old_logp=not learner_cfg.recompute_old_logp,
    )
    micro = learner.micro_rows(learner_cfg, layout["tokens"][0], mesh)
    eval_shape, calls = None, 0
    if eval_examples and config.eval.every:
        chunk = eval_chunk(config, eval_examples)
        greedy = dataclasses.replace(settings, n=1)
        eval_shape = engine.rollout_shape(chunk, width, greedy, chunk, rows_divisor)
        calls = -(-eval_examples // chunk)
    return programs.StepShapes(
        responses=batch * settings.n,
        sample=engine.rollout_shape(
            batch,
            width,
            settings,
            config.rollout.chunk_size,
            rows_divisor,
            paging(config, settings, rows_divisor),
        ),
        new_tokens=new,
        learner=layout,
        micro_batch=micro,
        eval=eval_shape,
        eval_calls=calls,
        eval_new_tokens=config.eval.max_new_tokens,
    )


def plan_run(
    config,
    devices: Sequence,
    eval_examples: int,
    model: decoder.ModelConfig | None = None,
    hbm_bytes: float | None = None,
) -> programs.Run:
    """The planner's `Run` of `config` over `devices`: the objects `train.run`
    makes, by the same functions, without weights.

    `model` replaces the config's model (tests plan odd architectures);
    `hbm_bytes` is the memory per chip that `rollout.decode_weights="auto"`
    chooses by (default: the chip's). A PPO run (`uses_critic`) carries its
    critic's settings and optimizer; the reference is kept as `train.run`
    keeps it (`uses_reference`: a KL in the loss or in the reward).
    """
    check_config(config)
    pad_id = 0
    if model is None:
        model, pad_id = _planned_model(config)
    run_mesh = mesh(config, devices)
    validate(config, model, run_mesh)
    if not model.eos_token_ids:  # a preset without a tokenizer: any stop id
        model = model.replace(eos_token_ids=(0,))
    settings = sampling_settings(config, model, pad_id)
    learner_cfg = learner_config(config, run_mesh, model)
    ppo = uses_critic(config)
    dmesh, tensor, decode_sharding = decode_layout(
        config, run_mesh, model, hbm_bytes or _device_hbm(devices[0])
    )
    return programs.Run(
        model=model,
        mesh=run_mesh,
        learner=learner_cfg,
        tx=optimizer(config),
        settings=settings,
        eval_settings=eval_sampling_settings(config, model, pad_id),
        shapes=step_shapes(
            config, run_mesh, eval_examples, settings, learner_cfg, dmesh
        ),
        decode_sharding=decode_sharding,
        decode_mesh=None if tensor == 1 else dmesh,
        decode_tensor=tensor,
        reference=uses_reference(config),
        reference_on_host=bool(config.train.reference_on_host),
        eval_every=config.eval.every if eval_examples else 0,
        token_budget=bool(config.train.max_tokens_per_micro_batch),
        critic=critic_config(config, learner_cfg) if ppo else None,
        critic_tx=critic_optimizer(config) if ppo else None,
        kl_in_reward=ppo and bool(config.algorithm.kl_in_reward),
    )


def _planned_model(config) -> tuple[decoder.ModelConfig, int]:
    """(ModelConfig, pad id) as `train.run` has them (`tokenizer_and_model`);
    for a hub id not in the local cache, the preset of the same name
    (`model_config`) and pad id 0."""
    try:
        tokenizer, model, _ = tokenizer_and_model(config)
    except FileNotFoundError:
        return model_config(config), 0
    return model, tokenizer.pad_token_id or 0


def _device_hbm(device) -> float | None:
    try:
        return chips.chip_for(device.device_kind).hbm_bytes
    except ValueError:
        return None  # no specs: "auto" decode weights stay replicated
