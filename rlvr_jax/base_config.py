"""The shared base of every training config: docs/recipe.md's π1 run, field by field.

Each experiment file (configs/pi1.py, pi13.py, pi1_pi13.py, dsr_sub.py) starts
from `base_config()` and changes only what differs. It lives in the package so
that a config file imports it like any module (`from rlvr_jax import
base_config as base`), whatever the working directory and wherever the config
file is. `get_config(arg)` arguments are comma-separated:
  tiny          a tiny random Qwen2 + in-process tokenizer on a built-in
                one-example task; runs on a laptop CPU in minutes
  steps=N       shortcut for train.steps (also batch=, n=, lr=, seed=)
  paper_protocol
                the paper's evaluation protocol (`paper_protocol`): a HF export
                of every 20th step and of step 0, for the six-benchmark sweep
"""

from __future__ import annotations

from ml_collections import config_dict

SHORTCUTS = {
    "steps": ("train", "steps", int),
    "batch": ("train", "batch_size", int),
    "n": ("rollout", "n", int),
    "lr": ("optim", "lr", float),
    "seed": ("", "seed", int),
}


def base_config() -> config_dict.ConfigDict:
    """The paper's π1 run on Qwen2.5-Math-1.5B (docs/recipe.md)."""
    c = config_dict.ConfigDict()
    c.seed = 0  # every random stream (init, data order, sampling) derives from it

    c.model = config_dict.ConfigDict()
    c.model.path = "Qwen/Qwen2.5-Math-1.5B"  # local HF dir, or hub id in the HF cache
    c.model.preset = ""  # "tiny"/"tiny_llama"/"lab": random init of that ModelConfig
    # The random presets' tokenizer's chat format ("qwen-math", "llama3", "r1");
    # "" = the preset's own (llama3 for tiny_llama, qwen-math otherwise).
    c.model.tiny_chat = ""
    c.model.dtype = "bfloat16"  # compute dtype (bf16 compute)
    c.model.param_dtype = "float32"  # fp32 master weights and optimizer state
    c.model.remat = True  # gradient checkpointing per decoder layer
    # The learner's attention: "flash" (the TPU Pallas kernel: no score block
    # through HBM), "xla" (einsums in query blocks), or "auto": flash on a
    # v5e/v6e TPU for a head dim of a multiple of 128 and rows of up to 4096
    # (rlvr_jax/model/flash.py `supports`), xla elsewhere.
    c.model.attention = "auto"

    c.data = config_dict.ConfigDict()
    # The pool: a packaged name ("dsr_sub": the 1,209-example DSR-sub), a veRL
    # parquet/jsonl file, a HF dataset dir or cached hub id; "" = the built-in
    # one-example task of `tiny` runs (then `indices` must be ()).
    c.data.train_path = "dsr_sub"
    c.data.indices = (124,)  # examples to train on (extra_info.index); () = all
    c.data.replicate = 128  # repeat the selected examples to this many rows; 0 = no
    c.data.shuffle = True  # shuffled with `seed`, drop_last
    c.data.max_prompt_len = 1024  # prompt ≤ 1024 tokens, left-padded
    c.data.prompt_buckets = (256, 512, 1024)  # padded prompt lengths (one compile each)
    # Ground truths replaced by example index, "INDEX=LABEL;..." (e.g.
    # "124=13"): the label-robustness ablation (train on a wrong label).
    c.data.label_override = ""

    c.rollout = config_dict.ConfigDict()
    c.rollout.n = 8  # G: samples per prompt, each prompt row is its own group
    c.rollout.temperature = 0.6  # T: sampling and training log-probs use logits / T
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0  # 0 = off
    c.rollout.max_new_tokens = 3072  # response ≤ 3072; truncated ones are kept
    c.rollout.chunk_size = 256  # decode slots: responses decoded at once (memory)
    c.rollout.cache_dtype = "bfloat16"
    # "replicated": a compute-dtype copy of the weights on every chip, read
    # locally by each decode step; "sharded": split like the params (gathered
    # every step), for models whose copy does not fit (rlvr_jax.plan says);
    # "auto": replicated when the copy is at most a quarter of a chip's memory.
    c.rollout.decode_weights = "auto"
    # Where the decode loop runs: "data" (the learner's devices as data-parallel
    # replicas), "tensor=T" (T = 2, 4 or 8 chips of a host split the MLP and
    # head weights; the KV cache is split over rows only, so a chip holds T×
    # the rows), or "auto" ("data" unless the copy exceeds a quarter of a chip
    # and a split copy and its cache fit; `rlvr_jax.plan` compares layouts).
    c.rollout.decode_mesh = "auto"
    # The KV cache. page_size 0: slot caches (each of rollout.chunk_size slots
    # holds prompt + max_new_tokens columns). C > 0: a paged cache of C-token
    # pages, rollout.pages response pages per chip of the batch axes (0: as
    # many as chunk_size slots of the widest response take), so rows in flight
    # are bounded by their real tokens; a dry pool preempts a row and
    # restarts it (same tokens). `rlvr_jax.plan` says how many pages fit.
    c.rollout.page_size = 0
    c.rollout.pages = 0
    c.rollout.prefill_chunk = 0  # paged: prompts per chip prefilled at once (0: all)

    c.reward = config_dict.ConfigDict()
    c.reward.think = False  # R1-Distill: grade after </think> only; unclosed: 0
    # What a response earns: "correct" (the paper's verifiable reward),
    # "format" (1 for a well-formed final boxed answer, right or wrong),
    # "random" (Bernoulli(random_p) per response from the seed, blind to it),
    # "correct_or_format" (1 if correct, format_value if only well formed).
    # The controls of Shao et al. 2025 ("Spurious Rewards").
    c.reward.kind = "correct"
    c.reward.random_p = 0.5
    c.reward.format_value = 0.5

    c.loss = config_dict.ConfigDict()
    c.loss.pg_coef = 1.0  # policy-gradient term; 0 = entropy-only ablation
    c.loss.clip_eps = 0.2  # ε of the PPO clip (low side)
    c.loss.clip_eps_high = 0.2  # ε_high (asymmetric clip; = clip_eps in the paper)
    c.loss.kl_coef = 0.001  # β of the KL to the reference policy; 0 = off
    c.loss.kl_type = "low_var_kl"  # k3 estimator, clamped to [-10, 10]
    c.loss.entropy_coef = 0.001  # α of the entropy bonus
    c.loss.agg = "token-mean"  # global token-mean over the mini-batch
    c.loss.adv_eps = 1e-6  # ε in (r − mean) / (std + ε)
    c.loss.norm_adv_by_std = True  # GRPO; False = Dr. GRPO-style mean-centering only

    # The advantage estimator and PPO's settings, under veRL's names
    # (verl/trainer/config/ppo_trainer.yaml; docs/recipe.md "PPO").
    c.algorithm = config_dict.ConfigDict()
    # "grpo": group-normalised outcome advantages, no critic (the paper's
    # main runs); "gae": PPO, a critic (value model) and GAE advantages.
    c.algorithm.adv_estimator = "grpo"
    c.algorithm.gamma = 1.0  # γ of GAE
    c.algorithm.lam = 1.0  # λ of GAE
    # The KL to the reference as a per-token reward penalty (veRL's
    # apply_kl_penalty, used when actor.use_kl_loss is off; needs "gae" and
    # loss.kl_coef = 0, as veRL applies one or the other).
    c.algorithm.kl_in_reward = False
    c.algorithm.kl_penalty = "kl"  # its estimator: kl, abs, mse, low_var_kl
    c.algorithm.kl_ctrl = config_dict.ConfigDict()
    c.algorithm.kl_ctrl.kl_coef = 0.001  # its β (veRL's fixed controller)

    # PPO's critic (read only with algorithm.adv_estimator = "gae"): the
    # policy's base model with a fresh value head, its own AdamW.
    c.critic = config_dict.ConfigDict()
    c.critic.optim = config_dict.ConfigDict()
    c.critic.optim.lr = 1e-5  # constant
    c.critic.optim.b1 = 0.9
    c.critic.optim.b2 = 0.999
    c.critic.optim.eps = 1e-8
    c.critic.optim.weight_decay = 0.01  # torch AdamW's default, as veRL's critic
    c.critic.optim.warmup_steps = 0
    c.critic.grad_clip = 1.0  # global-norm clip of the critic's gradient
    c.critic.cliprange_value = 0.5  # ε_v of the clipped value loss
    # veRL's trainer.critic_warmup: the actor is updated from the step
    # numbered critic_warmup on (steps counted from 1), only the critic
    # before it; 0 and 1 both update the actor from the first step.
    c.critic.warmup = 0

    c.optim = config_dict.ConfigDict()
    c.optim.lr = 1e-6  # η, constant
    c.optim.b1 = 0.9  # β1
    c.optim.b2 = 0.999  # β2
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.01  # λ, on all parameters as the reference does
    c.optim.decay_norms_biases = True  # False: exclude norms and biases from decay
    c.optim.grad_clip = 1.0  # global-norm clip (pre-clip norm is logged)
    c.optim.warmup_steps = 0  # linear warmup; none in the paper
    c.optim.first_step_zero_lr = False  # the reference's lr-0 first update quirk
    c.optim.decay_steps = 0  # cosine decay to 0 over this many updates; 0 = none

    c.train = config_dict.ConfigDict()
    c.train.steps = 2000  # RL steps, one optimizer update each (on-policy)
    c.train.batch_size = 128  # prompts per step (× rollout.n responses)
    c.train.micro_batch_size = 16  # responses per gradient-accumulation slice
    # Packed learner: tokens per device and micro-batch; 0: micro_batch_size
    # rows of the widest learner row over the data×fsdp devices.
    c.train.max_tokens_per_micro_batch = 0
    c.train.recompute_old_logp = True  # π_old from the learner (veRL); False: sampler
    # Learner head positions per chunk: [rows, chunk, vocab] fp32 logits (and
    # their gradient) exist one chunk at a time. Smaller: less memory, the
    # same FLOPs in more steps.
    c.train.logits_chunk = 512
    # Keep the frozen KL reference in pinned host memory, on the chips only
    # for its one log-prob pass a step: its HBM is free while sampling and
    # updating (the plan suggests it when a run does not fit otherwise).
    c.train.reference_on_host = False
    # Consecutive updates skipped for a non-finite loss or gradient norm
    # after which the run stops (saving its last good state): a run whose
    # every update is skipped is going nowhere.
    c.train.max_skipped_updates = 3

    c.mesh = config_dict.ConfigDict()
    # Params, gradients and AdamW state split over every chip (fsdp): at
    # 1.5B the fp32 state alone (18.5 GB) fills a replica's HBM.
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1 = all remaining devices
    c.mesh.tensor = 1

    c.eval = config_dict.ConfigDict()
    # "math500" (packaged veRL MATH500), a veRL file, "builtin" or "" = none;
    # several, comma-separated, each logged as eval/<name>/acc
    c.eval.path = "math500"
    c.eval.every = 20  # steps; also before the first step
    c.eval.max_examples = 0  # 0 = all
    c.eval.max_new_tokens = 3072  # greedy decoding
    # Prompts per evaluation call (one greedy response each): its prefill
    # batch. 256 prompts of 1024 tokens do not fit a 16 GB chip next to the
    # train state (python -m rlvr_jax.plan); 128 do.
    c.eval.chunk_size = 128

    c.checkpoint = config_dict.ConfigDict()
    c.checkpoint.every = 20
    c.checkpoint.keep = 3  # newest checkpoints kept
    c.checkpoint.resume_from = ""  # explicit initial checkpoint (see checkpoint.py)
    c.checkpoint.export_hf_every = 0  # also export a HF checkpoint every N steps
    c.checkpoint.async_save = True

    # Resuming a workdir with a config that differs from the one it was
    # started with is refused for keys that change the run's meaning
    # (model, data, seed, loss, optimizer, sampling, ...), unless named here
    # (comma-separated dotted keys, e.g. "optim.lr"). Steps, cadences,
    # logging and memory layout may change freely (train.RESUMABLE_KEYS).
    c.resume = config_dict.ConfigDict()
    c.resume.allow_changes = ""

    c.log = config_dict.ConfigDict()
    c.log.tensorboard = True
    c.log.wandb_project = ""  # "" = W&B off
    c.log.checker_timeout_s = 5.0  # per-answer deadline in the reward pool
    c.log.checker_workers = 0  # 0 = number of CPUs
    # Every N steps, K decoded training responses with their rewards go to
    # <workdir>/samples.jsonl (for reading what the model writes); 0 = off.
    c.log.samples_every = 0
    c.log.samples_count = 8
    return c


def apply_arg(
    c: config_dict.ConfigDict,
    arg: str | None,
    *,
    tiny_preset: str = "tiny",
    tiny_chat: str = "",
) -> config_dict.ConfigDict:
    """Applies a `get_config` argument string (see the module docstring).

    `tiny_preset` and `tiny_chat` are what `tiny` swaps in: a config of
    another model family keeps its family and prompt format at laptop size.
    """
    for token in filter(None, (arg or "").split(",")):
        if token == "tiny":
            make_tiny(c, tiny_preset, tiny_chat)
        elif token == "paper_protocol":
            paper_protocol(c)
        elif "=" in token:
            key, value = token.split("=", 1)
            if key not in SHORTCUTS:
                raise ValueError(
                    f"unknown config shortcut {key!r}; known: {sorted(SHORTCUTS)}"
                )
            section, field, cast = SHORTCUTS[key]
            (c[section] if section else c)[field] = cast(value)
        else:
            raise ValueError(f"unknown config argument {token!r}")
    return c


# Steps between the checkpoints the paper evaluates (0, 20, ..., 2000).
PAPER_EVAL_EVERY = 20


def paper_protocol(c: config_dict.ConfigDict) -> None:
    """The paper's evaluation protocol: every 20th step's weights, evaluated.

    Validation (`eval.path`) before the first step and every PAPER_EVAL_EVERY
    steps, and a Hugging Face export of the weights at each of those steps
    (step 0, the base model, included) into `<workdir>/hf/step_<n>`, so that
      python -m rlvr_jax.evaluate --config=configs/eval.py --workdir=W \
          --config.model.path=W/hf
    sweeps the six benchmarks over steps 0, 20, ..., as the reference's
    evaluation script (`eval_one_experiment_all_ckpts.sh`) sweeps its
    checkpoints. An export is written when a checkpoint is, so the checkpoint
    cadence is the same. Disk: 101 exports over 2,000 steps, each in the
    parameter dtype (fp32: ~6.2 GB at 1.5B parameters, ~620 GB in all).
    """
    c.eval.every = PAPER_EVAL_EVERY
    c.checkpoint.every = PAPER_EVAL_EVERY
    c.checkpoint.export_hf_every = PAPER_EVAL_EVERY


def make_tiny(c: config_dict.ConfigDict, preset: str = "tiny", chat: str = "") -> None:
    """Shrinks a config to a laptop-CPU run (minutes, no downloads, no files):
    the random `preset` with the tiny tokenizer in the `chat` format."""
    c.model.path = ""
    c.model.preset = preset
    c.model.tiny_chat = chat
    c.model.dtype = "float32"  # CPUs are slow at bf16 matmuls
    c.data.train_path = ""  # the built-in one-example task
    c.data.indices = ()
    c.data.replicate = 8
    c.data.max_prompt_len = 640  # fits π1 under the character-level tiny tokenizer
    c.data.prompt_buckets = (192, 640)
    c.rollout.n = 8
    c.rollout.temperature = 1.0
    c.rollout.max_new_tokens = 8
    c.rollout.chunk_size = 64
    c.rollout.page_size = c.rollout.pages = 0  # slot caches on a laptop
    c.rollout.prefill_chunk = 0
    c.eval.chunk_size = 64
    c.rollout.cache_dtype = "float32"
    c.optim.lr = 3e-3
    c.optim.weight_decay = 0.0
    c.critic.optim.lr = 3e-3  # PPO's critic learns at the tiny actor's rate
    c.critic.optim.weight_decay = 0.0
    c.train.steps = 6
    c.train.batch_size = 8
    c.train.micro_batch_size = 32
    c.eval.path = "builtin"  # greedy accuracy on the built-in task
    c.eval.every = 3
    c.eval.max_new_tokens = 8
    c.checkpoint.every = 3
    c.checkpoint.keep = 2
    c.log.checker_workers = 2


# The laptop lab (configs/lab/): synthetic data written here when absent,
# and the SFT run the RL configs start from.
LAB_DATA = "/tmp/rlvr_jax_lab/data"
LAB_SFT = "/tmp/rlvr_jax_lab/sft"
LAB_TRAIN, LAB_TEST = 2000, 50  # synthetic problems per domain and split
LAB_RL_LR = 1e-4  # every lab RL run's lr (docs/lab.md: how it was chosen)
# Problems per domain in the lab's RL pool (the first ones): 64 in all, so
# 16 steps of 8 prompts visit each twice (2 history entries to rank by).
LAB_RL_POOL = 16


def pop_arg(arg: str | None, key: str, default=None):
    """(value, the rest of `arg`) for a config-specific `key=value` token.

    A bare `key` token gives True (a flag); absent gives `default` (False for
    a flag when `default` is None).
    """
    tokens = [t for t in (arg or "").split(",") if t]
    value = False if default is None else default
    rest = []
    for t in tokens:
        if t == key:
            value = True
        elif t.startswith(key + "="):
            value = t[len(key) + 1 :]
        else:
            rest.append(t)
    return value, ",".join(rest)


def lab_config(arg: str | None) -> tuple[config_dict.ConfigDict, str]:
    """The laptop lab's shared base and the rest of `arg`.

    The model is always the `lab` random Qwen2 (`ModelConfig.lab`: 2 layers,
    d_model 128, 0.3M parameters): 2 shared CPU cores afford little more. `arg` is
    comma-separated: `tiny` (a few steps and 10 held-out problems per domain,
    for tests), `data=DIR` (where the synthetic files live, default LAB_DATA),
    then anything `apply_arg` takes. The synthetic files
    (`rlvr_jax.lab.synthetic.write`, seed 0, 2,000 train + 50 test problems per
    domain) are written into DIR if it does not hold them yet.

    Sizes (the tiny tokenizer: one token per character): prompts ≤ 112
    tokens (bucket 128, with the chat template's system prompt), solutions
    ≤ 56 tokens with their stop token (responses ≤ 64).
    """
    from rlvr_jax.lab import synthetic

    small, rest = pop_arg(arg, "tiny")
    data_dir, rest = pop_arg(rest, "data", LAB_DATA)
    root = synthetic.write(data_dir, seed=0, n_train=LAB_TRAIN, n_test=LAB_TEST)
    c = base_config()
    make_tiny(c)
    c.model.preset = "lab"
    c.model.remat = False  # a 0.3M model's activations are small
    c.data.train_path = f"{root}/train.jsonl"
    c.data.max_prompt_len = 128
    c.data.prompt_buckets = (128,)
    c.rollout.max_new_tokens = 64
    c.rollout.temperature = 1.0
    c.rollout.chunk_size = 128
    c.eval.path = synthetic.eval_paths(root)
    c.eval.max_new_tokens = 64
    # 100 decode slots, two passes over the 200 held-out problems, as the
    # docs/lab.md figures were measured (200 slots decode the same tokens).
    c.eval.chunk_size = 100
    c.eval.max_examples = 10 if small else 0
    c.checkpoint.async_save = False
    c.log.tensorboard = False
    return c, rest


def lab_rl_config(arg: str | None) -> tuple[config_dict.ConfigDict, str]:
    """`lab_config` plus the settings every lab RL run shares.

    Extra argument: `sft=DIR`, the SFT workdir to start from (default
    LAB_SFT). GRPO as in the paper (KL 0.001, entropy 0.001, n = 8, one
    update per step) at a laptop's scale: 8 prompts a step, lr LAB_RL_LR,
    16 steps, greedy evaluation of all four held-out sets every 4 steps.
    """
    c, rest = lab_config(arg)
    sft, rest = pop_arg(rest, "sft", LAB_SFT)
    small = c.eval.max_examples > 0
    c.checkpoint.resume_from = sft
    c.data.replicate = 0
    # The learner's 64 responses × 192 tokens are most of a step's time.
    c.train.batch_size = 8
    c.train.micro_batch_size = 64
    c.train.steps = 3 if small else 16
    c.rollout.n = 8
    c.rollout.temperature = 1.0
    c.optim.lr = LAB_RL_LR
    c.eval.every = 3 if small else 4
    c.checkpoint.every = 3 if small else 16
    c.checkpoint.keep = 1
    return c, rest


def lab_rl_pool(domains=("arith", "linear", "fraction", "count")) -> tuple[int, ...]:
    """Indices of the lab's RL pool: the first LAB_RL_POOL problems per domain.

    Ids follow `synthetic.write`: each domain's LAB_TRAIN training problems in
    DOMAINS order.
    """
    from rlvr_jax.lab import synthetic

    return tuple(
        synthetic.DOMAINS.index(d) * LAB_TRAIN + i
        for d in domains
        for i in range(LAB_RL_POOL)
    )


def lab_one_shot_config(arg: str | None) -> config_dict.ConfigDict:
    """A lab 1-shot run: `index=I`, one pool example replicated to the batch
    (8 copies, each its own GRPO group of 8); then `apply_arg`'s arguments."""
    c, rest = lab_rl_config(arg)
    index, rest = pop_arg(rest, "index", "")
    if index == "":
        raise ValueError(
            "a 1-shot lab config needs index=I (an example id of the pool)"
        )
    c.data.indices = (int(index),)
    c.data.replicate = c.train.batch_size
    return apply_arg(c, rest)
