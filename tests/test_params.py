"""HF checkpoint import/export: logits parity with transformers, round trips, errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax.model import decoder as M
from rlvr_jax.model import params as PR
from tests import hf_fixtures

PARITY_CASES = {
    "tied_gqa": dict(),
    "untied_gqa": dict(tie_word_embeddings=False),
    "mqa_odd_width": dict(
        num_attention_heads=6,
        num_key_value_heads=1,
        hidden_size=48,
        intermediate_size=80,
    ),
    "mha_three_layers": dict(
        num_key_value_heads=4, num_hidden_layers=3, rope_theta=1e6
    ),
}


def _left_padded_batch(rng, vocab, lengths, width):
    tokens = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        tokens[row, width - n :] = rng.integers(0, vocab, n)
        mask[row, width - n :] = True
    return tokens, mask


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_logits_match_transformers(tmp_path, case):
    path = hf_fixtures.make_checkpoint(tmp_path, seed=1, **PARITY_CASES[case])
    ref = hf_fixtures.load_reference(path)
    config, params = PR.load_hf(path, np.float32, compute_dtype="float32")
    rng = np.random.default_rng(0)
    # Odd lengths and a left-padded batch with rows of different lengths.
    for lengths, width in [((7,), 7), ((13, 5, 1), 13)]:
        tokens, mask = _left_padded_batch(rng, config.vocab_size, lengths, width)
        want = hf_fixtures.hf_logits(ref, tokens, mask)
        got = np.asarray(M.forward(config, params, tokens, mask=mask))
        err = np.abs(got - want)[mask].max()
        assert err <= 1e-4, f"{case} lengths={lengths}: max |dlogit| = {err}"


def test_compute_dtype_follows_storage_dtype_unless_asked(hf_tiny_dir):
    ref = hf_fixtures.load_reference(hf_tiny_dir)
    config, params = PR.load_hf(hf_tiny_dir, np.float32)  # no compute_dtype
    assert config.dtype == "float32"
    tokens, mask = _left_padded_batch(np.random.default_rng(0), 256, (9, 4), 9)
    got = np.asarray(M.forward(config, params, tokens, mask=mask))
    err = np.abs(got - hf_fixtures.hf_logits(ref, tokens, mask))[mask].max()
    assert err <= 1e-4, f"fp32 load computes off transformers' fp32: {err}"
    assert PR.load_hf(hf_tiny_dir, ml_dtypes.bfloat16)[0].dtype == "bfloat16"
    asked, _ = PR.load_hf(hf_tiny_dir, np.float32, compute_dtype="bfloat16")
    assert (asked.dtype, asked.param_dtype) == ("bfloat16", "float32")


def test_load_reads_config_fields(hf_tiny_dir):
    config, params = PR.load_hf(hf_tiny_dir, np.float32)
    assert (config.n_layers, config.n_heads, config.n_kv_heads) == (2, 4, 2)
    assert config.tie_embeddings and "lm_head" not in params
    assert config.param_dtype == "float32"
    assert params["layers"]["attn"]["q_kernel"].shape == (2, 64, 4, 16)
    assert params["layers"]["attn"]["q_kernel"].dtype == jnp.float32


@pytest.mark.parametrize("tied", [True, False])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, tied):
    config = M.ModelConfig.tiny(
        tie_embeddings=tied, dtype="float32", eos_token_ids=(3, 5)
    )
    params = M.init_params(config, jax.random.key(7))
    out = tmp_path / "export"
    PR.save_hf(str(out), config, params)
    ref = hf_fixtures.load_reference(out)
    tokens, mask = _left_padded_batch(
        np.random.default_rng(1), config.vocab_size, (9, 4), 9
    )
    want = hf_fixtures.hf_logits(ref, tokens, mask)
    got = np.asarray(M.forward(config, params, tokens, mask=mask))
    assert np.abs(got - want)[mask].max() <= 1e-4
    with open(out / "generation_config.json") as f:
        assert json.load(f)["eos_token_id"] == [3, 5]

    config2, params2 = PR.load_hf(str(out), np.float32, compute_dtype="float32")
    assert config2 == config
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        params,
        params2,
    )


def test_sharded_index_export_and_bf16_round_trip(tmp_path):
    config = M.ModelConfig.tiny(n_layers=3)
    params = M.init_params(config, jax.random.key(3))
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = tmp_path / "sharded"
    PR.save_hf(str(out), config, params, max_shard_bytes=40_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2 and (out / "model.safetensors.index.json").exists()
    _, params2 = PR.load_hf(str(out), ml_dtypes.bfloat16)
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: (a, b), params, params2))
    for a, b in zip(leaves[::2], leaves[1::2]):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_straight_into_a_sharding(hf_tiny_dir):
    devices = np.array(jax.devices())
    mesh = Mesh(devices.reshape(-1), ("fsdp",))
    config = PR.read_config(hf_tiny_dir)
    shapes = M.abstract_params(config)

    # Shard every tensor's largest divisible axis; the rest replicate.
    def spec(x):
        for axis in np.argsort(x.shape)[::-1]:
            if x.shape[axis] % len(devices) == 0:
                parts = [None] * x.ndim
                parts[axis] = "fsdp"
                return NamedSharding(mesh, P(*parts))
        return NamedSharding(mesh, P())

    shardings = jax.tree.map(spec, shapes)
    _, sharded = PR.load_hf(hf_tiny_dir, np.float32, shardings=shardings)
    _, plain = PR.load_hf(hf_tiny_dir, np.float32)
    flat_s, _ = jax.tree_util.tree_flatten(sharded)
    flat_p, _ = jax.tree_util.tree_flatten(plain)
    flat_sh, _ = jax.tree_util.tree_flatten(shardings)
    for a, b, sh in zip(flat_s, flat_p, flat_sh):
        assert a.sharding == sh
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_real_config_maps_one_to_one_onto_hf_layout():
    config = M.ModelConfig.qwen2_5_math_1_5b()
    shapes = M.abstract_params(config)
    assert M.count_params(shapes) == 1_543_714_304
    names = {}
    for hf_name, _, rule, _, shape in PR._entries(config, shapes):
        names[hf_name] = PR._hf_shape(shape, rule)
    # The published Qwen2.5-Math-1.5B safetensors layout (tied: no lm_head).
    assert len(names) == 2 + 28 * 12
    assert names["model.embed_tokens.weight"] == (151936, 1536)
    assert names["model.layers.0.self_attn.q_proj.weight"] == (1536, 1536)
    assert names["model.layers.0.self_attn.k_proj.weight"] == (256, 1536)
    assert names["model.layers.27.self_attn.v_proj.bias"] == (256,)
    assert names["model.layers.5.self_attn.o_proj.weight"] == (1536, 1536)
    assert names["model.layers.3.mlp.gate_proj.weight"] == (8960, 1536)
    assert names["model.layers.3.mlp.down_proj.weight"] == (1536, 8960)
    assert names["model.norm.weight"] == (1536,)
    assert sum(int(np.prod(s)) for s in names.values()) == 1_543_714_304
    # Every parameter element is covered by exactly one HF tensor.
    assert {p for _, p, _, _, _ in PR._entries(config, shapes)} == {
        "/".join(k.key for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(shapes)
    }


# ------------------------------------------------------------------- errors
def test_missing_directory_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        PR.load_hf(str(tmp_path / "nope"))


def test_unsupported_architecture_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]})
    )
    with pytest.raises(ValueError, match="unsupported architecture.*gemma2"):
        PR.load_hf(str(tmp_path))


def _rewrite(src, dst, edit):
    from safetensors.numpy import save_file

    os.makedirs(dst, exist_ok=True)
    for f in ("config.json",):
        with open(os.path.join(src, f)) as a, open(os.path.join(dst, f), "w") as b:
            b.write(a.read())
    tensors = PR._Tensors(src)
    data = {n: np.array(tensors.get(n)) for n in tensors.names()}
    edit(data)
    save_file(data, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_and_unexpected_tensors_are_listed(hf_tiny_dir, tmp_path):
    def edit(d):
        del d["model.layers.1.mlp.up_proj.weight"]
        del d["model.norm.weight"]
        d["model.layers.0.extra.weight"] = np.zeros(3, np.float32)

    path = _rewrite(hf_tiny_dir, str(tmp_path / "bad"), edit)
    with pytest.raises(ValueError) as err:
        PR.load_hf(path)
    msg = str(err.value)
    assert "model.layers.1.mlp.up_proj.weight" in msg and "model.norm.weight" in msg
    assert "unexpected tensors ['model.layers.0.extra.weight']" in msg


def test_shape_mismatch_names_tensor_and_shapes(hf_tiny_dir, tmp_path):
    def edit(d):
        d["model.layers.0.self_attn.k_proj.weight"] = np.zeros((31, 64), np.float32)

    path = _rewrite(hf_tiny_dir, str(tmp_path / "bad"), edit)
    with pytest.raises(
        ValueError, match=r"k_proj.weight has shape \(31, 64\), expected \(32, 64\)"
    ):
        PR.load_hf(path)


def test_missing_weights_file_is_clear(hf_tiny_dir, tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(
        open(os.path.join(hf_tiny_dir, "config.json")).read()
    )
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        PR.load_hf(str(d))
