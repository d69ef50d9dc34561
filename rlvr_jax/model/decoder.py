"""The Qwen2 decoder in Flax Linen, shared by the sampler and the learner.

Axis legend for tensor-name suffixes:
  b  batch                       t  query positions (this call's tokens)
  s  key/value slots (cache)     d  model width (hidden_size)
  n  query heads                 k  key/value heads
  g  query heads per kv head     h  head dim
  f  MLP width                   v  vocabulary
  l  decoder layer

Layers are stacked with `nn.scan`, so every per-layer parameter carries a
leading `l` axis and compile time does not grow with depth. Parameters live in
`ModelConfig.param_dtype` (fp32 for training) and are cast to
`ModelConfig.dtype` (bf16 by default) for the matmuls; norms, RoPE, the
attention softmax and the logits are computed in fp32.

The KV cache is a fixed-size buffer of `s` slots shared by every row: a call
writes its `t` tokens at slots [index, index + t) and a key slot is visible to
a query when it is valid (not padding) and not in the query's future. Left
padding therefore needs no per-row offsets: pad slots are simply invalid.

Packed rows (the learner's layout, see rlvr_jax/learner/packing.py) hold several
sequences side by side: per-token segment ids (0 = padding) restrict each
query to keys of its own segment, and per-segment positions restart RoPE.
Without a cache, attention over long rows runs in query blocks
(`blockwise_attention`) so no [T, T] score tensor exists in the forward or the
backward pass; on TPU the learner runs it through the flash kernel instead
(`ModelConfig.attention_kernel`, rlvr_jax/model/flash.py), which keeps score tiles
on chip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlvr_jax.model import flash

Params = Any

# A finite "minus infinity": a fully masked row (a left-pad query) then gets a
# uniform softmax instead of NaNs that would poison gradients through `where`.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


ATTENTION_KERNELS = ("xla", "flash")
FAMILIES = ("qwen2", "llama")
ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder architecture hyperparameters (hashable: a jit static arg).

    One decoder serves the Qwen2 and Llama families (pre-norm SwiGLU blocks,
    GQA, RoPE, RMSNorm): they differ in the q/k/v biases, the RoPE frequency
    rule and the HF names written back, which are fields here. Field names
    follow the model, the HF `config.json` key is in the comment.
    """

    vocab_size: int  # vocab_size
    d_model: int  # hidden_size
    n_layers: int  # num_hidden_layers
    n_heads: int  # num_attention_heads
    n_kv_heads: int  # num_key_value_heads
    head_dim: int  # hidden_size // num_attention_heads
    mlp_dim: int  # intermediate_size
    rope_theta: float = 10000.0  # rope_theta / rope_parameters.rope_theta
    rms_eps: float = 1e-6  # rms_norm_eps
    tie_embeddings: bool = True  # tie_word_embeddings
    max_seq_len: int = 4096  # max_position_embeddings
    bos_token_id: int | None = None  # bos_token_id
    eos_token_ids: tuple[int, ...] = ()  # eos_token_id (int or list)
    dtype: str = "bfloat16"  # compute dtype of matmuls and activations
    param_dtype: str = "float32"  # storage dtype of the parameters
    # jax.checkpoint each decoder layer (learner memory). Runs leave it False:
    # the learner sets it from LearnerConfig.remat, its one switch.
    remat: bool = False
    # Unroll the layer scan and the attention's query-block loop (same math,
    # same params). XLA's cost analysis counts a loop body once, so `plan`
    # unrolls them to count every layer's and every block's FLOPs.
    unroll_loops: bool = False
    # Query positions per attention block in a cache-free call (the learner):
    # rows longer than this attend block by block, each block checkpointed,
    # so scores take [block, T] instead of [T, T] memory. Rows up to this
    # length use the plain single-block computation.
    attention_block: int = 1024
    # How a cache-free call (the learner) computes attention: "xla" (einsums,
    # in query blocks) or "flash" (the TPU Pallas kernel, `rlvr_jax.model.flash`:
    # no score block through HBM). A run-time choice like `remat`: the
    # learner sets it from LearnerConfig.attention_kernel.
    attention_kernel: str = "xla"
    # The family decides the HF architecture `to_hf` writes back; the fields
    # below it are the architectural differences the decoder implements.
    family: str = "qwen2"  # model_type: "qwen2" or "llama"
    attention_bias: bool = True  # q/k/v biases (Qwen2: always; Llama 3: none)
    # RoPE frequency scaling (rope_scaling / rope_parameters): "default" (none)
    # or "llama3", which divides the low frequencies by `rope_factor` and
    # blends the band between (Llama 3.1/3.2's long-context rule).
    rope_type: str = "default"  # rope_type
    rope_factor: float = 1.0  # factor
    rope_low_freq_factor: float = 1.0  # low_freq_factor
    rope_high_freq_factor: float = 4.0  # high_freq_factor
    rope_original_max_len: int = 8192  # original_max_position_embeddings

    def __post_init__(self):
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(
                f"attention_kernel={self.attention_kernel!r} not in {ATTENTION_KERNELS}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of "
                f"n_kv_heads={self.n_kv_heads}"
            )
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} not in {FAMILIES}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r} not in {ROPE_TYPES}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # raises on an unknown dtype name

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- HF I/O
    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> ModelConfig:
        """Builds a config from a Hugging Face `config.json` dict.

        Qwen2 (`Qwen2ForCausalLM`) and Llama (`LlamaForCausalLM`) checkpoints
        are read; anything this decoder would compute differently (another
        architecture, sliding windows, another RoPE rule, biases on the output
        or MLP projections, another activation) is refused with the reason.
        """
        family = _hf_family(hf)
        if hf.get("use_sliding_window"):
            raise ValueError("sliding-window attention is not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={hf['hidden_act']!r}: only silu is supported")
        if hf.get("mlp_bias"):
            raise ValueError("mlp_bias=true is not supported (no MLP biases)")
        if family == "llama" and hf.get("attention_bias"):
            # Llama's attention_bias also puts a bias on o_proj.
            raise ValueError("attention_bias=true is not supported for Llama")
        if hf.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(
                f"partial_rotary_factor={hf['partial_rotary_factor']}: only full "
                "rotary embeddings are supported"
            )
        eos = hf.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        heads = hf["num_attention_heads"]
        kwargs = dict(
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads", heads),
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            mlp_dim=hf["intermediate_size"],
            rms_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            max_seq_len=hf.get("max_position_embeddings", 4096),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos,
            family=family,
            attention_bias=family == "qwen2",
            **_hf_rope(hf),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """The Hugging Face `config.json` dict for this architecture."""
        eos = list(self.eos_token_ids)
        common = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.mlp_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_seq_len,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
            "attention_dropout": 0.0,
            "torch_dtype": self.param_dtype,
        }
        if self.family == "llama":
            scaling = None
            if self.rope_type == "llama3":
                scaling = {
                    "rope_type": "llama3",
                    "factor": self.rope_factor,
                    "low_freq_factor": self.rope_low_freq_factor,
                    "high_freq_factor": self.rope_high_freq_factor,
                    "original_max_position_embeddings": self.rope_original_max_len,
                }
            return {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                **common,
                "attention_bias": False,
                "mlp_bias": False,
                "pretraining_tp": 1,
                "rope_scaling": scaling,
            }
        if not self.attention_bias or self.rope_type != "default":
            raise ValueError(
                "a Qwen2 checkpoint always has q/k/v biases and no RoPE scaling; "
                f"this config has attention_bias={self.attention_bias}, "
                f"rope_type={self.rope_type!r}"
            )
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            **common,
            "use_sliding_window": False,
        }

    # --------------------------------------------------------------- presets
    @classmethod
    def qwen2_5_math_1_5b(cls, **overrides) -> ModelConfig:
        """Qwen2.5-Math-1.5B, the paper's model (1,543,714,304 parameters)."""
        return cls(
            **{
                **dict(
                    vocab_size=151936,
                    d_model=1536,
                    n_layers=28,
                    n_heads=12,
                    n_kv_heads=2,
                    head_dim=128,
                    mlp_dim=8960,
                    rope_theta=10000.0,
                    tie_embeddings=True,
                    max_seq_len=4096,
                    bos_token_id=151643,
                    eos_token_ids=(151643,),
                ),
                **overrides,
            }
        )

    @classmethod
    def qwen2_5_0_5b(cls, **overrides) -> ModelConfig:
        """Qwen2.5-0.5B (494,032,768 parameters)."""
        return cls(
            **{
                **dict(
                    vocab_size=151936,
                    d_model=896,
                    n_layers=24,
                    n_heads=14,
                    n_kv_heads=2,
                    head_dim=64,
                    mlp_dim=4864,
                    rope_theta=1000000.0,
                    tie_embeddings=True,
                    max_seq_len=32768,
                    bos_token_id=151643,
                    eos_token_ids=(151643,),
                ),
                **overrides,
            }
        )

    @classmethod
    def qwen2_5_7b(cls, **overrides) -> ModelConfig:
        """Qwen2.5-7B (7,615,616,512 parameters, untied head)."""
        return cls(
            **{
                **dict(
                    vocab_size=152064,
                    d_model=3584,
                    n_layers=28,
                    n_heads=28,
                    n_kv_heads=4,
                    head_dim=128,
                    mlp_dim=18944,
                    rope_theta=1000000.0,
                    tie_embeddings=False,
                    max_seq_len=131072,
                    bos_token_id=151643,
                    eos_token_ids=(151643,),
                ),
                **overrides,
            }
        )

    @classmethod
    def qwen2_5_math_7b(cls, **overrides) -> ModelConfig:
        """Qwen2.5-Math-7B, the paper's 7B model (7,615,616,512 parameters).

        Values: huggingface.co/Qwen/Qwen2.5-Math-7B config.json. Unlike
        Qwen2.5-7B it keeps rope_theta 10,000 and a 4,096-token context.
        """
        return cls.qwen2_5_7b(
            **{**dict(rope_theta=10000.0, max_seq_len=4096), **overrides}
        )

    @classmethod
    def deepseek_r1_distill_qwen_1_5b(cls, **overrides) -> ModelConfig:
        """DeepSeek-R1-Distill-Qwen-1.5B (1,777,088,000 parameters).

        Values: huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
        config.json. Qwen2.5-Math-1.5B's shape with an untied head and a
        131,072-token context (rope_theta stays 10,000).
        """
        return cls.qwen2_5_math_1_5b(
            **{**dict(tie_embeddings=False, max_seq_len=131072), **overrides}
        )

    @classmethod
    def llama3_2_3b_instruct(cls, **overrides) -> ModelConfig:
        """Llama-3.2-3B-Instruct (3,212,749,824 parameters, tied head).

        Values: huggingface.co/meta-llama/Llama-3.2-3B-Instruct config.json
        and generation_config.json (stop on <|end_of_text|>, <|eom_id|>,
        <|eot_id|>): no attention biases, llama3 RoPE scaling (factor 32
        over an original 8,192-token context), rms_norm_eps 1e-5.
        """
        return cls(
            **{
                **dict(
                    vocab_size=128256,
                    d_model=3072,
                    n_layers=28,
                    n_heads=24,
                    n_kv_heads=8,
                    head_dim=128,
                    mlp_dim=8192,
                    rope_theta=500000.0,
                    rms_eps=1e-5,
                    tie_embeddings=True,
                    max_seq_len=131072,
                    bos_token_id=128000,
                    eos_token_ids=(128001, 128008, 128009),
                    family="llama",
                    attention_bias=False,
                    rope_type="llama3",
                    rope_factor=32.0,
                    rope_low_freq_factor=1.0,
                    rope_high_freq_factor=4.0,
                    rope_original_max_len=8192,
                ),
                **overrides,
            }
        )

    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """A CPU-sized Qwen2 (GQA, tied head) for tests and laptop runs."""
        return cls(
            **{
                **dict(
                    vocab_size=512,
                    d_model=64,
                    n_layers=2,
                    n_heads=4,
                    n_kv_heads=2,
                    head_dim=16,
                    mlp_dim=128,
                    rope_theta=10000.0,
                    tie_embeddings=True,
                    max_seq_len=1024,
                ),
                **overrides,
            }
        )

    @classmethod
    def tiny_llama(cls, **overrides) -> ModelConfig:
        """`tiny` as a Llama: no attention biases, llama3 RoPE scaling whose
        original context (64) a tiny run's rows exceed, so the scaled band
        is exercised."""
        return cls.tiny(
            **{
                **dict(
                    family="llama",
                    attention_bias=False,
                    rope_theta=500000.0,
                    rms_eps=1e-5,
                    rope_type="llama3",
                    rope_factor=8.0,
                    rope_original_max_len=64,
                ),
                **overrides,
            }
        )

    @classmethod
    def lab(cls, **overrides) -> ModelConfig:
        """The laptop lab's model: `tiny` twice as wide (2 layers, d_model 128).

        Width is nearly free on 2 CPU cores at these sizes (a step costs
        ~1.3× the tiny model's), depth is not (each layer adds about half).
        """
        return cls.tiny(**{**dict(d_model=128, head_dim=32, mlp_dim=256), **overrides})


_HF_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}


def _hf_family(hf: dict) -> str:
    """ "qwen2" or "llama" from a HF config's model_type / architectures."""
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type in FAMILIES:
        return model_type
    for arch in archs:
        if arch in _HF_ARCHITECTURES:
            return _HF_ARCHITECTURES[arch]
    raise ValueError(
        f"unsupported architecture: model_type={model_type!r}, "
        f"architectures={archs!r} (supported: Qwen2ForCausalLM, LlamaForCausalLM)"
    )


def _hf_rope(hf: dict) -> dict:
    """The RoPE fields of a HF config: `rope_scaling` (transformers 4) or
    `rope_parameters` (transformers 5, which also holds rope_theta)."""
    params = dict(hf.get("rope_parameters") or {})
    params.update(hf.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type")) or "default"
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if rope_type == "default":
        return dict(rope_theta=theta)
    if rope_type != "llama3":
        raise ValueError(
            f"unsupported RoPE scaling {rope_type!r} ({params}); supported: "
            "none and llama3"
        )
    try:
        return dict(
            rope_theta=theta,
            rope_type="llama3",
            rope_factor=float(params["factor"]),
            rope_low_freq_factor=float(params["low_freq_factor"]),
            rope_high_freq_factor=float(params["high_freq_factor"]),
            rope_original_max_len=int(params["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ValueError(f"llama3 RoPE scaling without {e.args[0]!r}: {params}") from e


class KVCache(NamedTuple):
    """Fixed-size key/value buffers for incremental decoding.

    Attributes:
      k_lbskh: keys of every layer, [L, B, S, K, H] in the cache dtype.
      v_lbskh: values, same shape.
      valid_bs: which slots hold a real (non-padding) token, [B, S] bool.
      index: the next slot to write, int32 scalar (shared by all rows).
    """

    k_lbskh: jax.Array
    v_lbskh: jax.Array
    valid_bs: jax.Array
    index: jax.Array


def init_cache(
    config: ModelConfig, batch: int, max_len: int, dtype: str = "bfloat16"
) -> KVCache:
    """An empty cache of `max_len` slots for `batch` rows."""
    shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.head_dim)
    return KVCache(
        k_lbskh=jnp.zeros(shape, dtype),
        v_lbskh=jnp.zeros(shape, dtype),
        valid_bs=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
    )


def rope(x_btnh: jax.Array, sin_bth: jax.Array, cos_bth: jax.Array) -> jax.Array:
    """Rotary embedding, rotate-half layout as in HF Qwen2 (fp32 math).

    `x_btnh` may have any number of head axes between `t` and `h`.
    """
    half = x_btnh.shape[-1] // 2
    x = x_btnh.astype(jnp.float32)
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    heads = tuple(range(2, x.ndim - 1))
    sin = jnp.expand_dims(sin_bth, heads)
    cos = jnp.expand_dims(cos_bth, heads)
    return (x * cos + rotated * sin).astype(x_btnh.dtype)


def inverse_frequencies(config: ModelConfig) -> jax.Array:
    """RoPE's per-pair angular frequencies [H/2] in fp32, as HF computes them.

    "llama3" scaling (HF `_compute_llama3_parameters`): wavelengths longer
    than original_context / low_freq_factor are stretched by `rope_factor`,
    those shorter than original_context / high_freq_factor are kept, and the
    band between blends the two linearly in original_context / wavelength.
    """
    h = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    if config.rope_type == "default":
        return inv_freq
    factor, low, high = (
        config.rope_factor,
        config.rope_low_freq_factor,
        config.rope_high_freq_factor,
    )
    context = config.rope_original_max_len
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return jnp.where(medium, blended, scaled)


def rope_tables(positions_bt: jax.Array, config: ModelConfig):
    """sin/cos tables [B, T, H] for integer positions, computed in fp32."""
    inv_freq_h = inverse_frequencies(config)
    angles = positions_bt.astype(jnp.float32)[..., None] * inv_freq_h
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


class RMSNorm(nn.Module):
    """Root-mean-square norm; statistics in fp32, as HF Qwen2RMSNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        cfg = self.config
        scale_d = self.param(
            "scale", nn.initializers.ones, (cfg.d_model,), jnp.dtype(cfg.param_dtype)
        )
        return rms_norm(cfg, x_btd, scale_d)


def rms_norm(config: ModelConfig, x_btd: jax.Array, scale_d: jax.Array) -> jax.Array:
    """The RMSNorm math on any [..., D] input; returns `config.dtype`."""
    x = x_btd.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + config.rms_eps)
    # HF casts back to the input dtype before applying the weight.
    x = x.astype(x_btd.dtype)
    return (scale_d.astype(jnp.float32) * x).astype(config.dtype)


def attention_probs(scores_f32: jax.Array, mask: jax.Array, dtype) -> jax.Array:
    """Softmax over the last (key) axis of fp32 scores where `mask` is True."""
    scores_f32 = jnp.where(mask, scores_f32, MASK_VALUE)
    return jax.nn.softmax(scores_f32, axis=-1).astype(dtype)


def dot_attention(q_btkgh, k_bskh, v_bskh, q_seg_bt, key_seg_bs, q_slot_t, dtype):
    """Masked softmax attention of T queries over S key slots, [B, T, K, G, H].

    A key slot s is visible to query t when it is not in the query's future
    (s <= q_slot_t[t]), holds a real token (key_seg_bs != 0) and belongs to
    the query's segment (key_seg_bs[s] == q_seg_bt[t]). A query with no
    visible key (left padding) gets a uniform softmax, never NaN.
    """
    h = q_btkgh.shape[-1]
    scores_bkgts = jnp.einsum(
        "btkgh,bskh->bkgts", q_btkgh, k_bskh, preferred_element_type=jnp.float32
    ) / math.sqrt(h)
    s = k_bskh.shape[1]
    causal_ts = jnp.arange(s)[None, :] <= q_slot_t[:, None]
    same_bts = q_seg_bt[:, :, None] == key_seg_bs[:, None, :]
    mask_bts = causal_ts[None] & same_bts & (key_seg_bs != 0)[:, None, :]
    probs_bkgts = attention_probs(scores_bkgts, mask_bts[:, None, None], dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)


def blockwise_attention(
    q_btkgh,
    k_bskh,
    v_bskh,
    q_seg_bt,
    key_seg_bs,
    q_slot_t,
    dtype,
    *,
    block,
    unroll=False,
):
    """`dot_attention` computed over blocks of `block` queries, one at a time.

    Each query's softmax is over all its keys within one block, so the result
    is the plain computation's (the same reductions, only the query axis is
    split). The block body is under `jax.checkpoint` inside a `lax.scan`: the
    forward holds one [block, S] score block, and the backward recomputes a
    block's scores instead of keeping them, so neither pass holds [T, S].
    T is padded to a multiple of `block` with segment-0 queries (dropped).
    `unroll` emits the blocks one after another instead of as a loop.
    """
    b, t = q_btkgh.shape[:2]
    nb = -(-t // block)
    pad = nb * block - t
    if pad:
        q_btkgh = jnp.pad(q_btkgh, ((0, 0), (0, pad)) + ((0, 0),) * 3)
        q_seg_bt = jnp.pad(q_seg_bt, ((0, 0), (0, pad)))
        q_slot_t = jnp.pad(q_slot_t, (0, pad))
    # Blocks lead, rows stay intact so their sharding carries over.
    q_nbckgh = q_btkgh.reshape(b, nb, block, *q_btkgh.shape[2:]).swapaxes(0, 1)
    q_seg_nbc = q_seg_bt.reshape(b, nb, block).swapaxes(0, 1)
    q_slot_nc = q_slot_t.reshape(nb, block)

    @jax.checkpoint
    def one_block(k_bskh, v_bskh, key_seg_bs, xs):
        q_bckgh, q_seg_bc, q_slot_c = xs
        return dot_attention(
            q_bckgh, k_bskh, v_bskh, q_seg_bc, key_seg_bs, q_slot_c, dtype
        )

    _, out_nbckgh = jax.lax.scan(
        lambda carry, xs: (carry, one_block(k_bskh, v_bskh, key_seg_bs, xs)),
        None,
        (q_nbckgh, q_seg_nbc, q_slot_nc),
        unroll=nb if unroll else 1,
    )
    out_btkgh = out_nbckgh.swapaxes(0, 1).reshape(b, nb * block, *q_btkgh.shape[2:])
    return out_btkgh[:, :t]


def _kernel(module: nn.Module, name: str, shape, fan_in: int):
    cfg = module.config
    init = nn.initializers.normal(stddev=1.0 / math.sqrt(fan_in))
    w = module.param(name, init, shape, jnp.dtype(cfg.param_dtype))
    return w.astype(cfg.dtype)


def _bias(module: nn.Module, name: str, shape):
    cfg = module.config
    b = module.param(name, nn.initializers.zeros, shape, jnp.dtype(cfg.param_dtype))
    return b.astype(cfg.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention (q/k/v biases when the config has them)
    with an optional KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x_btd, sin_bth, cos_bth, q_seg_bt, key_seg_bs, q_slot_t, layer_cache
    ):
        cfg = self.config
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_btnh = jnp.einsum(
            "btd,dnh->btnh", x_btd, _kernel(self, "q_kernel", (d, n, h), d)
        )
        if cfg.attention_bias:
            q_btnh = q_btnh + _bias(self, "q_bias", (n, h))
        k_btkh = jnp.einsum(
            "btd,dkh->btkh", x_btd, _kernel(self, "k_kernel", (d, k, h), d)
        )
        if cfg.attention_bias:
            k_btkh = k_btkh + _bias(self, "k_bias", (k, h))
        v_btkh = jnp.einsum(
            "btd,dkh->btkh", x_btd, _kernel(self, "v_kernel", (d, k, h), d)
        )
        if cfg.attention_bias:
            v_btkh = v_btkh + _bias(self, "v_bias", (k, h))
        q_btnh = rope(q_btnh, sin_bth, cos_bth)
        k_btkh = rope(k_btkh, sin_bth, cos_bth)

        if layer_cache is None:
            k_bskh, v_bskh = k_btkh, v_btkh
            new_cache = None
        else:
            ck_bskh, cv_bskh, index = layer_cache
            ck_bskh = jax.lax.dynamic_update_slice(
                ck_bskh, k_btkh.astype(ck_bskh.dtype), (0, index, 0, 0)
            )
            cv_bskh = jax.lax.dynamic_update_slice(
                cv_bskh, v_btkh.astype(cv_bskh.dtype), (0, index, 0, 0)
            )
            new_cache = (ck_bskh, cv_bskh)
            k_bskh, v_bskh = ck_bskh.astype(cfg.dtype), cv_bskh.astype(cfg.dtype)

        b, t = x_btd.shape[:2]
        q_btkgh = q_btnh.reshape(b, t, k, n // k, h)
        args = (q_btkgh, k_bskh, v_bskh, q_seg_bt, key_seg_bs, q_slot_t, cfg.dtype)
        if layer_cache is None and cfg.attention_kernel == "flash":
            # Cache-free: the keys are this call's tokens, causal by slot, and
            # a real query's segment is its key slot's (flash.py's docstring).
            out_btkgh = flash.attention(q_btkgh, k_bskh, v_bskh, key_seg_bs)
        elif layer_cache is None and t > cfg.attention_block:
            out_btkgh = blockwise_attention(
                *args, block=cfg.attention_block, unroll=cfg.unroll_loops
            )
        else:
            out_btkgh = dot_attention(*args)
        out_btnh = out_btkgh.reshape(b, t, n, h)
        o_nhd = _kernel(self, "o_kernel", (n, h, d), n * h)
        return jnp.einsum("btnh,nhd->btd", out_btnh, o_nhd), new_cache


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd):
        cfg = self.config
        d, f = cfg.d_model, cfg.mlp_dim
        gate_btf = x_btd @ _kernel(self, "gate_kernel", (d, f), d)
        up_btf = x_btd @ _kernel(self, "up_kernel", (d, f), d)
        return swiglu(gate_btf, up_btf) @ _kernel(self, "down_kernel", (f, d), f)


def swiglu(gate_btf: jax.Array, up_btf: jax.Array) -> jax.Array:
    """The MLP's gated activation, silu(gate) * up."""
    return nn.silu(gate_btf) * up_btf


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)).

    `constrain` (optional) is applied to the residual stream entering and
    leaving the block: the caller's sharding constraint (the learner pins rows
    to its batch axes so FSDP gathers weights, not activations). The model
    itself knows no mesh.
    """

    config: ModelConfig
    constrain: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(
        self,
        x_btd,
        layer_cache,
        sin_bth,
        cos_bth,
        q_seg_bt,
        key_seg_bs,
        q_slot_t,
        index,
    ):
        cfg = self.config
        constrain = self.constrain or (lambda x: x)
        x_btd = constrain(x_btd)
        cache = None if layer_cache is None else (*layer_cache, index)
        attn_btd, new_cache = Attention(cfg, name="attn")(
            RMSNorm(cfg, name="input_norm")(x_btd),
            sin_bth,
            cos_bth,
            q_seg_bt,
            key_seg_bs,
            q_slot_t,
            cache,
        )
        x_btd = x_btd + attn_btd
        x_btd = x_btd + MLP(cfg, name="mlp")(RMSNorm(cfg, name="post_attn_norm")(x_btd))
        return constrain(x_btd), new_cache


class Qwen2(nn.Module):
    """The decoder: embed → L × DecoderLayer (scanned) → final norm → head."""

    config: ModelConfig
    constrain: Callable[[jax.Array], jax.Array] | None = None  # see DecoderLayer

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=nn.initializers.normal(stddev=0.02),
            param_dtype=jnp.dtype(cfg.param_dtype),
            dtype=jnp.dtype(cfg.dtype),
        )
        layer = DecoderLayer
        if cfg.remat:
            # In the scan XLA cannot merge a layer's recompute with its
            # forward, so CSE prevention would only cost speed; unrolled (the
            # planner's cost programs) it could, and the cost would miss the
            # recompute the scanned run does.
            layer = nn.remat(layer, prevent_cse=cfg.unroll_loops)
        self.layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0,) + (nn.broadcast,) * 6,
            length=cfg.n_layers,
            unroll=cfg.n_layers if cfg.unroll_loops else 1,
        )(cfg, self.constrain)
        self.final_norm = RMSNorm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head_dv = self.param(
                "lm_head",
                nn.initializers.normal(stddev=0.02),
                (cfg.d_model, cfg.vocab_size),
                jnp.dtype(cfg.param_dtype),
            )

    def __call__(
        self,
        tokens_bt,
        positions_bt,
        key_valid_bt,
        cache: KVCache | None,
        segment_ids_bt=None,
    ):
        """Returns (final hidden states [B, T, D] in compute dtype, new cache).

        `segment_ids_bt` (int [B, T], 0 = padding; cache-free calls only)
        packs several sequences in a row: attention stays within a segment.
        Without it every row is one segment, its real tokens `key_valid_bt`.
        """
        cfg = self.config
        x_btd = self.embed(tokens_bt)
        sin_bth, cos_bth = rope_tables(positions_bt, cfg)
        t = tokens_bt.shape[1]
        if cache is None:
            q_slot_t = jnp.arange(t)
            key_valid_bs = key_valid_bt
            layer_caches, index = None, jnp.zeros((), jnp.int32)
        else:
            if segment_ids_bt is not None:
                raise ValueError("segment ids are for cache-free (learner) calls")
            index = cache.index
            q_slot_t = index + jnp.arange(t)
            key_valid_bs = jax.lax.dynamic_update_slice(
                cache.valid_bs, key_valid_bt, (0, index)
            )
            layer_caches = (cache.k_lbskh, cache.v_lbskh)
        if segment_ids_bt is None:
            # One segment per row: every query sees its row's valid keys.
            q_seg_bt = jnp.ones(tokens_bt.shape, jnp.int32)
            key_seg_bs = key_valid_bs.astype(jnp.int32)
        else:
            q_seg_bt = key_seg_bs = jnp.asarray(segment_ids_bt, jnp.int32)
        x_btd, new_layer_caches = self.layers(
            x_btd,
            layer_caches,
            sin_bth,
            cos_bth,
            q_seg_bt,
            key_seg_bs,
            q_slot_t,
            index,
        )
        new_cache = None
        if cache is not None:
            new_cache = KVCache(*new_layer_caches, key_valid_bs, index + t)
        return self.final_norm(x_btd), new_cache

    def head(self, x_btd: jax.Array) -> jax.Array:
        """fp32 logits [B, T, V] from final hidden states."""
        if self.config.tie_embeddings:
            w_vd = self.embed.embedding.astype(self.config.dtype)
            return jnp.einsum(
                "btd,vd->btv", x_btd, w_vd, preferred_element_type=jnp.float32
            )
        w_dv = self.lm_head_dv.astype(self.config.dtype)
        return jnp.einsum(
            "btd,dv->btv", x_btd, w_dv, preferred_element_type=jnp.float32
        )


def positions_from_mask(mask_bt: jax.Array) -> jax.Array:
    """RoPE positions for a left-padded batch: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def _inputs(tokens_bt, positions_bt, mask_bt):
    tokens_bt = jnp.asarray(tokens_bt, jnp.int32)
    mask_bt = (
        jnp.ones(tokens_bt.shape, bool)
        if mask_bt is None
        else jnp.asarray(mask_bt, bool)
    )
    if positions_bt is None:
        positions_bt = positions_from_mask(mask_bt)
    return tokens_bt, jnp.asarray(positions_bt, jnp.int32), mask_bt


def hidden(
    config,
    params,
    tokens_bt,
    positions_bt=None,
    mask_bt=None,
    cache=None,
    segment_ids_bt=None,
    constrain=None,
):
    """Final hidden states [B, T, D] (compute dtype) and the updated cache.

    This is the learner's entry point: log-probs are taken from the hidden
    states in sequence chunks (see `head`) so the [B, T, V] fp32 logits never
    exist at once. For packed rows pass `segment_ids_bt` (int [B, T], 0 =
    padding) and per-segment `positions_bt`; `mask_bt` is then ignored.
    `constrain` is applied to the residual stream around every layer (see
    `DecoderLayer`).
    """
    if segment_ids_bt is not None and mask_bt is None:
        mask_bt = jnp.asarray(segment_ids_bt) != 0
    tokens_bt, positions_bt, mask_bt = _inputs(tokens_bt, positions_bt, mask_bt)
    return Qwen2(config, constrain).apply(
        {"params": params}, tokens_bt, positions_bt, mask_bt, cache, segment_ids_bt
    )


def head(config, params, x_btd):
    """fp32 logits [B, T, V] from hidden states [B, T, D]."""
    return Qwen2(config).apply({"params": params}, x_btd, method=Qwen2.head)


def forward(config, params, tokens, positions=None, mask=None, cache=None):
    """Logits of a (left-padded) token batch.

    Args:
      config: the architecture.
      params: the parameter pytree (as `init_params` / `params.load_hf` give).
      tokens: int token ids [B, T].
      positions: RoPE positions [B, T]; derived from `mask` when None.
      mask: [B, T], True for real tokens, False for padding; all True if None.
      cache: optional `KVCache`; when given the tokens are written at its
        current index and `(logits, new_cache)` is returned.

    Returns:
      fp32 logits [B, T, V] (and the new cache when `cache` was given).
    """
    x_btd, new_cache = hidden(config, params, tokens, positions, mask, cache)
    logits_btv = head(config, params, x_btd)
    return logits_btv if cache is None else (logits_btv, new_cache)


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Randomly initialised parameters (for tests and `tiny` runs)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1), bool)
    # Run the head too, so an untied `lm_head` is created.
    return Qwen2(config).init(
        rng, tokens, tokens, mask, None, method=lambda m, *a: m.head(m(*a)[0])
    )["params"]


def abstract_params(config: ModelConfig) -> Params:
    """ShapeDtypeStructs of the parameters; allocates nothing."""
    return jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))


def count_params(params: Params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
