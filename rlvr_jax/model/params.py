"""Hugging Face safetensors checkpoints ⇄ rlvr_jax parameter pytrees.

Qwen2 and Llama checkpoints share the tensor names; a Llama has no q/k/v
bias rows (`ModelConfig.attention_bias`).

The mapping between the two layouts is one declarative table, `WEIGHT_MAP`.
Each row names an HF tensor, the path of our tensor, and the layout rule:

  same    identical layout (embedding, norm scales)
  flat    HF keeps a flat vector, we keep [heads, head_dim] (q/k/v biases)
  linN    an HF `nn.Linear` weight [out, in]; ours is [*in, *out] where the
          first N axes of ours are the input axes (so ours = W.T reshaped)

Rows whose HF name holds `{i}` are per-layer tensors; ours stacks them on a
leading layer axis (the model scans over layers).

PPO's critic (`rlvr_jax.learner.critic`) is saved and loaded as transformers'
token-classification model with one label (`save_critic_hf`,
`load_critic_hf`): the same rows under its decoder, no lm_head, and its value
head as `score` (`CRITIC_HEAD_MAP`).

Loading reads tensors through memory maps, so a tensor is only paged in when a
device shard needs it; with `shardings` each device's slice is assembled by
`jax.make_array_from_callback` and no full host copy of the model is made.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Callable, Collection, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np

from rlvr_jax.model.decoder import ModelConfig, abstract_params

WEIGHT_MAP: tuple[tuple[str, str, str], ...] = (
    ("model.embed_tokens.weight", "embed/embedding", "same"),
    ("model.norm.weight", "final_norm/scale", "same"),
    ("lm_head.weight", "lm_head", "lin1"),  # untied heads only
    ("model.layers.{i}.input_layernorm.weight", "layers/input_norm/scale", "same"),
    (
        "model.layers.{i}.post_attention_layernorm.weight",
        "layers/post_attn_norm/scale",
        "same",
    ),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers/attn/q_kernel", "lin1"),
    ("model.layers.{i}.self_attn.q_proj.bias", "layers/attn/q_bias", "flat"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers/attn/k_kernel", "lin1"),
    ("model.layers.{i}.self_attn.k_proj.bias", "layers/attn/k_bias", "flat"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers/attn/v_kernel", "lin1"),
    ("model.layers.{i}.self_attn.v_proj.bias", "layers/attn/v_bias", "flat"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers/attn/o_kernel", "lin2"),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers/mlp/gate_kernel", "lin1"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers/mlp/up_kernel", "lin1"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers/mlp/down_kernel", "lin1"),
)

# Tensors some checkpoints carry that hold nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


# ----------------------------------------------------------------- layouts
def _hf_shape(ours: tuple[int, ...], rule: str) -> tuple[int, ...]:
    if rule == "same":
        return ours
    if rule == "flat":
        return (math.prod(ours),)
    n_in = int(rule[3:])
    return (math.prod(ours[n_in:]), math.prod(ours[:n_in]))


def _to_ours(hf: np.ndarray, ours: tuple[int, ...], rule: str) -> np.ndarray:
    if rule.startswith("lin"):
        hf = hf.T
    return hf.reshape(ours)


def _to_hf(x: np.ndarray, rule: str) -> np.ndarray:
    if rule == "same":
        return x
    if rule == "flat":
        return x.reshape(-1)
    n_in = int(rule[3:])
    return x.reshape(math.prod(x.shape[:n_in]), -1).T


def _entries(
    config: ModelConfig, shapes
) -> Iterator[tuple[str, str, str, int | None, tuple]]:
    """Yields (hf_name, our_path, rule, layer or None, our per-layer shape)."""
    for hf_name, path, rule in WEIGHT_MAP:
        if path == "lm_head" and config.tie_embeddings:
            continue
        if path.endswith("_bias") and not config.attention_bias:
            continue  # Llama: no q/k/v biases
        shape = tuple(_get(shapes, path).shape)
        if "{i}" in hf_name:
            for i in range(config.n_layers):
                yield hf_name.format(i=i), path, rule, i, shape[1:]
        else:
            yield hf_name, path, rule, None, shape


def _get(tree, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


# ------------------------------------------------------------ safetensors I/O
def _read_header(file: str) -> tuple[dict, int]:
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class _Tensors:
    """Lazy, memory-mapped access to the tensors of a HF model directory.

    Reads the safetensors format directly (its header is JSON, its payload
    raw little-endian arrays) because the `safetensors` numpy frontend cannot
    return bfloat16, the dtype Qwen checkpoints ship in.
    """

    def __init__(self, path: str):
        index_file = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index_file):
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"{path}: no model.safetensors or model.safetensors.index.json "
                "(only safetensors checkpoints are supported)"
            )
        self._where: dict[str, tuple[str, dict, int]] = {}
        for name in files:
            file = os.path.join(path, name)
            if not os.path.exists(file):
                raise FileNotFoundError(f"{file}: listed in the index but missing")
            header, offset = _read_header(file)
            for key, info in header.items():
                self._where[key] = (file, info, offset)
        self._maps: dict[str, np.memmap] = {}

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][1]["shape"])

    def get(self, name: str) -> np.ndarray:
        file, info, offset = self._where[name]
        if file not in self._maps:
            self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        raw = self._maps[file][offset + start : offset + end]
        return raw.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


# ------------------------------------------------------------------- loading
def _config_json(path: str) -> dict:
    """The config.json dict of a local HF model directory."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"{path}: no config.json")
    with open(config_file) as f:
        return json.load(f)


def read_config(path: str, **overrides) -> ModelConfig:
    """The `ModelConfig` of a local HF model directory."""
    hf = _config_json(path)
    # The generation config lists every stop token (e.g. <|im_end|> and
    # <|endoftext|>); config.json often only names one.
    gen_file = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_file) and "eos_token_ids" not in overrides:
        with open(gen_file) as f:
            gen_eos = json.load(f).get("eos_token_id")
        if gen_eos is not None:
            hf = {**hf, "eos_token_id": gen_eos}
    return ModelConfig.from_hf(hf, **overrides)


def load_hf(
    path: str,
    dtype: Any = np.float32,
    *,
    compute_dtype: str | None = None,
    shardings: Any = None,
    **config_overrides,
) -> tuple[ModelConfig, Any]:
    """Loads a local Hugging Face Qwen2 or Llama directory.

    Args:
      path: directory with config.json and model.safetensors (or an index with
        shards).
      dtype: parameter (storage) dtype, e.g. np.float32 or jnp.bfloat16.
      compute_dtype: `ModelConfig.dtype`, the dtype of matmuls/activations;
        None computes in the storage dtype (fp32 weights give fp32 logits,
        equal to transformers'; training configs ask for bf16 explicitly).
      shardings: optional pytree of `jax.sharding.Sharding` matching the
        params; each device then receives only its own slice.
      **config_overrides: other `ModelConfig` fields to set (e.g. remat=True).

    Returns:
      (config, params) with params as `jax.Array`s.

    Raises:
      FileNotFoundError: missing directory or files.
      ValueError: an unsupported architecture, missing/unexpected tensors (all
        listed), or a shape mismatch (name, expected, got).
    """
    param_dtype = np.dtype(dtype)
    config = read_config(
        path,
        param_dtype=param_dtype.name,
        dtype=compute_dtype or param_dtype.name,
        **config_overrides,
    )
    shapes = abstract_params(config)
    entries = list(_entries(config, shapes))
    # A tied checkpoint may still store its (identical) head.
    tolerated = {"lm_head.weight"} if config.tie_embeddings else set()
    params = _load_entries(
        path,
        _Tensors(path),
        entries,
        shapes,
        param_dtype,
        shardings,
        layout=f"the {config.family} layout of its config",
        tolerated=tolerated,
    )
    return config, params


def _load_entries(
    path: str,
    tensors: _Tensors,
    entries: list,
    shapes,
    dtype,
    shardings,
    *,
    layout: str,
    tolerated: Collection[str] = (),
):
    """Our params tree (the paths of `entries`) read from `tensors`, after
    checking the checkpoint holds exactly these tensors (but `tolerated` and
    ignored ones) in their shapes; `layout` names the layout in the error."""
    expected = {e[0] for e in entries}
    present = tensors.names()
    missing = sorted(expected - present)
    unexpected = sorted(
        n
        for n in present - expected
        if not n.endswith(_IGNORED_SUFFIXES) and n not in tolerated
    )
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match {layout}: "
            f"missing tensors {missing}, unexpected tensors {unexpected}"
        )
    for hf_name, _, rule, _, shape in entries:
        want = _hf_shape(shape, rule)
        if tensors.shape(hf_name) != want:
            raise ValueError(
                f"{path}: tensor {hf_name} has shape {tensors.shape(hf_name)}, "
                f"expected {want}"
            )

    by_path: dict[str, list] = {}
    for entry in entries:
        by_path.setdefault(entry[1], []).append(entry)

    params: dict = {}
    for our_path, group in by_path.items():
        abstract = _get(shapes, our_path)
        read = _reader(tensors, group, dtype)
        if shardings is None:
            value = jax.numpy.asarray(read(tuple(slice(None) for _ in abstract.shape)))
        else:
            value = jax.make_array_from_callback(
                abstract.shape, _get(shardings, our_path), read
            )
        _set(params, our_path, value)
    return params


def _reader(tensors: _Tensors, group, dtype) -> Callable[[tuple], np.ndarray]:
    """A callback giving any slice of one of our tensors, read lazily."""
    stacked = group[0][3] is not None

    def one(hf_name, rule, shape, index):
        x = _to_ours(tensors.get(hf_name), shape, rule)[index]
        return np.asarray(x, dtype=dtype)

    def read(index: tuple) -> np.ndarray:
        index = tuple(index)
        if not stacked:
            hf_name, _, rule, _, shape = group[0]
            return one(hf_name, rule, shape, index)
        layers = range(len(group))[index[0]]
        return np.stack(
            [one(group[i][0], group[i][2], group[i][4], index[1:]) for i in layers]
        )

    return read


# ------------------------------------------------------------------- saving
def save_hf(
    path: str,
    config: ModelConfig,
    params: Any,
    *,
    dtype: Any = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> None:
    """Writes a Hugging Face checkpoint (safetensors + config.json) of the
    config's family (`Qwen2ForCausalLM` or `LlamaForCausalLM`).

    The result loads with `transformers.AutoModelForCausalLM.from_pretrained`
    and vLLM. Tensors are fetched to the host one layer at a time.

    Args:
      path: output directory (created).
      config: the architecture.
      params: the parameter pytree.
      dtype: storage dtype of the files; the params' own dtype when None.
      max_shard_bytes: above this total size the weights are split into
        `model-0000i-of-0000n.safetensors` files with an index.
    """
    _write_hf(
        path,
        config,
        config.to_hf(),
        params,
        list(_entries(config, params)),
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
    )


def _write_hf(
    path: str,
    config: ModelConfig,
    hf_config: dict,
    params: Any,
    entries: list,
    *,
    dtype: Any,
    max_shard_bytes: int,
) -> None:
    """Writes the tensors of `entries` (read from `params` at their paths,
    the first being the embedding) with `hf_config` as config.json, and the
    generation config of `config`'s stop tokens (`save_hf`'s arguments)."""
    from safetensors.numpy import save_file  # writes bf16 via ml_dtypes

    os.makedirs(path, exist_ok=True)
    out_dtype = None if dtype is None else np.dtype(dtype)

    def tensor(entry) -> np.ndarray:
        hf_name, our_path, rule, layer, _ = entry
        x = _get(params, our_path)
        x = np.asarray(jax.device_get(x if layer is None else x[layer]))
        x = np.ascontiguousarray(_to_hf(x, rule))
        return x if out_dtype is None else x.astype(out_dtype)

    stored_dtype = out_dtype or np.dtype(_get(params, entries[0][1]).dtype)
    itemsize = stored_dtype.itemsize
    total = sum(math.prod(_hf_shape(e[4], e[2])) * itemsize for e in entries)
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = math.prod(_hf_shape(entry[4], entry[2])) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes

    hf_config = {**hf_config, "torch_dtype": stored_dtype.name}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    if config.eos_token_ids:
        # transformers' generate() reads its stop tokens from here.
        generation = {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": list(config.eos_token_ids),
        }
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
    metadata = {"format": "pt"}  # transformers insists on this key
    if len(shards) == 1:
        save_file(
            {e[0]: tensor(e) for e in shards[0]},
            os.path.join(path, "model.safetensors"),
            metadata=metadata,
        )
        return
    weight_map = {}
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({e[0]: tensor(e) for e in shard}, os.path.join(path, name), metadata)
        weight_map.update({e[0]: name for e in shard})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2
        )


# ------------------------------------------------------------------- critic
# PPO's critic (`rlvr_jax.learner.critic`) as transformers' token-classification
# model with one label, which is how veRL builds it: the decoder's tensors as
# in a causal LM (no lm_head) and the value head as `score`, an
# nn.Linear(D, 1) with a bias.
CRITIC_ARCHITECTURES = {
    "qwen2": "Qwen2ForTokenClassification",
    "llama": "LlamaForTokenClassification",
}
# The critic's params tree, {CRITIC_DECODER: the decoder's params without an
# LM head, CRITIC_HEAD: {"kernel": [D, 1], "bias": [1]}}: defined here, on the
# model's floor, so that this module and the learner's critic share it.
CRITIC_DECODER = "decoder"
CRITIC_HEAD = "value_head"


def critic_body_config(model_config: ModelConfig) -> ModelConfig:
    """The critic's decoder: the policy's, without an LM head (a tied head
    creates no parameter, and the critic never calls it)."""
    return model_config.replace(tie_embeddings=True)


def abstract_critic_params(model_config: ModelConfig) -> Any:
    """ShapeDtypeStructs of the critic's params; allocates nothing."""
    dtype = np.dtype(model_config.param_dtype)
    return {
        CRITIC_DECODER: abstract_params(critic_body_config(model_config)),
        CRITIC_HEAD: {
            "kernel": jax.ShapeDtypeStruct((model_config.d_model, 1), dtype),
            "bias": jax.ShapeDtypeStruct((1,), dtype),
        },
    }


# (HF tensor, our leaf under the critic's value head, layout rule)
CRITIC_HEAD_MAP: tuple[tuple[str, str, str], ...] = (
    ("score.weight", "kernel", "lin1"),  # [1, D] ⇄ [D, 1]
    ("score.bias", "bias", "same"),  # [1]
)
# ModelConfig fields that leave the critic's values unchanged: a critic
# checkpoint's config may differ from the run's in these, not in the others.
_RUN_TIME_FIELDS = frozenset(
    {
        "dtype",
        "param_dtype",
        "remat",
        "unroll_loops",
        "attention_block",
        "attention_kernel",
        "tie_embeddings",
        "max_seq_len",
        "bos_token_id",
        "eos_token_ids",
    }
)


def _critic_entries(model_config: ModelConfig, critic_params) -> list:
    """`_entries` of a critic's params tree: its decoder's (no lm_head) under
    `decoder/`, then the value head's."""
    body = critic_body_config(model_config)
    entries = [
        (hf_name, f"{CRITIC_DECODER}/{path}", rule, layer, shape)
        for hf_name, path, rule, layer, shape in _entries(
            body, critic_params[CRITIC_DECODER]
        )
    ]
    for hf_name, leaf, rule in CRITIC_HEAD_MAP:
        path = f"{CRITIC_HEAD}/{leaf}"
        entries.append(
            (hf_name, path, rule, None, tuple(_get(critic_params, path).shape))
        )
    return entries


def _num_labels(hf: dict) -> int:
    """transformers' `num_labels` of a config.json dict (2 when unset)."""
    if hf.get("num_labels") is not None:
        return int(hf["num_labels"])
    if hf.get("id2label"):
        return len(hf["id2label"])
    return 2


def save_critic_hf(
    directory: str,
    model_config: ModelConfig,
    critic_params: Any,
    *,
    dtype: Any = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> None:
    """Writes PPO's critic as a Hugging Face token-classification checkpoint.

    `transformers.AutoModelForTokenClassification.from_pretrained` loads it as
    `Qwen2ForTokenClassification` or `LlamaForTokenClassification` (the
    config's family) with one label, and its logits[..., 0] are
    `critic.values`. `load_critic_hf` reads it back.

    Args:
      directory: output directory (created).
      model_config: the policy's architecture (`critic.values`' argument).
      critic_params: {"decoder": ..., "value_head": {"kernel", "bias"}}.
      dtype, max_shard_bytes: as `save_hf`'s.
    """
    hf_config = {
        **model_config.to_hf(),
        "architectures": [CRITIC_ARCHITECTURES[model_config.family]],
        "num_labels": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "classifier_dropout": 0.0,  # veRL's critic config sets it
    }
    _write_hf(
        directory,
        model_config,
        hf_config,
        critic_params,
        _critic_entries(model_config, critic_params),
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
    )


def load_critic_hf(path: str, model_config: ModelConfig, shardings: Any = None) -> Any:
    """Reads a critic from a Hugging Face token-classification checkpoint
    with one label (`save_critic_hf`'s, or veRL's saved critic).

    Args:
      path: the checkpoint directory.
      model_config: the policy's architecture; the params are stored in its
        `param_dtype`.
      shardings: optional pytree of shardings matching the critic's params
        (e.g. `critic.state_shardings(...).params`); each device then reads
        only its own slice.

    Returns:
      The critic's params, {"decoder": ..., "value_head": ...}.

    Raises:
      FileNotFoundError: missing directory or files.
      ValueError: no value head (`score.*`; a causal LM's checkpoint: start a
        critic from it with `load_hf` and `critic.from_policy`), a number of
        labels other than one, an architecture other than `model_config`'s
        (the differing fields), or missing/unexpected/misshapen tensors.
    """
    hf = _config_json(path)
    tensors = _Tensors(path)
    head = [hf_name for hf_name, _, _ in CRITIC_HEAD_MAP]
    missing = [n for n in head if n not in tensors.names()]
    if missing:
        raise ValueError(
            f"{path}: no value head (missing {missing}): not a token-classification "
            "(critic) checkpoint; to start a critic from a causal LM, load it with "
            "`load_hf` and call `critic.from_policy`"
        )
    labels = _num_labels(hf)
    if labels != 1:
        raise ValueError(
            f"{path}: num_labels={labels}; a critic checkpoint has one label "
            "(a value per token)"
        )
    ckpt = read_config(path)
    differ = []
    for field in dataclasses.fields(ModelConfig):
        got, want = getattr(ckpt, field.name), getattr(model_config, field.name)
        if field.name not in _RUN_TIME_FIELDS and got != want:
            differ.append(f"{field.name}={got!r} (expected {want!r})")
    if differ:
        raise ValueError(
            f"{path}: the critic's architecture differs from the model config: "
            + ", ".join(differ)
        )
    shapes = abstract_critic_params(model_config)
    return _load_entries(
        path,
        tensors,
        _critic_entries(model_config, shapes),
        shapes,
        np.dtype(model_config.param_dtype),
        shardings,
        layout=f"a {CRITIC_ARCHITECTURES[model_config.family]} with one label",
    )


def resolve_model_path(path: str) -> str:
    """A local HF directory for `model.path` (a directory or a cached hub id)."""
    if os.path.isdir(path):
        return path
    if path.count("/") == 1 and not path.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(path, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss means "not cached"
            pass
    raise FileNotFoundError(
        f"model.path={path!r} is neither a local directory nor a hub id in the "
        "local Hugging Face cache. Fetch it on a machine with network access "
        f"with `huggingface-cli download {path}` (or `hf download {path} "
        "--local-dir DIR` and pass --config.model.path=DIR)."
    )
