"""PPO's critic against transformers' token-classification models.

veRL's critic is `AutoModelForTokenClassification` with one label
(`Qwen2ForTokenClassification` / `LlamaForTokenClassification`): the decoder
under `model.*` and a value head `score` (nn.Linear(D, 1) with a bias). Here:
`critic.values` equals its logits[..., 0] on left-padded and packed rows,
`params.save_critic_hf` / `load_critic_hf` round-trip through transformers,
the refusals, and `critic.from_policy` of a policy read from a causal LM.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax
import pytest
import torch
import transformers

from rlvr_jax import sharding
from rlvr_jax.learner import critic
from rlvr_jax.model import decoder as M
from rlvr_jax.model import params as PR
from tests import hf_fixtures

CONFIGS = {
    "qwen2": M.ModelConfig.tiny(dtype="float32"),
    # Rows past the original context (64) reach the llama3-scaled band.
    "llama": M.ModelConfig.tiny_llama(dtype="float32", tie_embeddings=False),
}
HF_CLASSES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForTokenClassification),
    "llama": (transformers.LlamaConfig, transformers.LlamaForTokenClassification),
}
LENGTHS = (70, 23, 5)
_values = jax.jit(critic.values, static_argnums=0)


def _left_padded(rng, vocab, lengths):
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        tokens[row, width - n :] = rng.integers(1, vocab, n)
        mask[row, width - n :] = True
    return tokens, mask


def _hf_critic(family, seed=0):
    """A random fp32 token-classification model with one label (eager, eval),
    its weights spread like `hf_fixtures.make_model`'s."""
    config_cls, model_cls = HF_CLASSES[family]
    hf = {
        k: v
        for k, v in CONFIGS[family].to_hf().items()
        if k not in ("architectures", "torch_dtype")
    }
    config = config_cls(
        **hf, num_labels=1, classifier_dropout=0.0, attn_implementation="eager"
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def _hf_values(model, tokens, mask):
    return hf_fixtures.hf_logits(model, tokens, mask)[..., 0]


def _load_reference(path):
    return transformers.AutoModelForTokenClassification.from_pretrained(
        str(path), attn_implementation="eager", dtype=torch.float32
    ).eval()


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(
        lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
        a,
        b,
    )


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf_critic(request, tmp_path_factory):
    """(family, HF dir, transformers model, our config, our params) of a critic
    built and saved by transformers."""
    family = request.param
    model = _hf_critic(family, seed=3)
    path = str(tmp_path_factory.mktemp(f"critic_{family}"))
    model.save_pretrained(path)
    config = CONFIGS[family]
    return family, path, model, config, PR.load_critic_hf(path, config)


# ------------------------------------------------------------------ parity
def test_values_match_transformers_token_classification(hf_critic):
    family, _, model, config, params = hf_critic
    assert type(model).__name__ == HF_CLASSES[family][1].__name__
    tokens, mask = _left_padded(np.random.default_rng(0), config.vocab_size, LENGTHS)
    want = _hf_values(model, tokens, mask)
    got = np.asarray(_values(config, params, {"tokens": tokens, "mask": mask}))
    assert got.shape == tokens.shape and got.dtype == np.float32
    err = np.abs(got - want)[mask].max()
    assert err <= 1e-4, f"{family}: max |dvalue| = {err}"
    # The head is really read: without its bias every value moves.
    assert abs(float(params["value_head"]["bias"][0])) > 1e-3


def test_packed_values_equal_unpacked_columns(hf_critic):
    _, _, _, config, params = hf_critic
    rng = np.random.default_rng(1)
    lengths, width = (9, 14), 27  # two sequences in one row, 4 padding columns
    seqs = [rng.integers(1, config.vocab_size, n) for n in lengths]
    tokens = np.zeros((1, width), np.int64)
    segment_ids = np.zeros((1, width), np.int32)
    positions = np.zeros((1, width), np.int32)
    start = 0
    for i, seq in enumerate(seqs):
        cols = slice(start, start + len(seq))
        tokens[0, cols], segment_ids[0, cols] = seq, i + 1
        positions[0, cols] = np.arange(len(seq))
        start += len(seq)
    packed = {
        "tokens": tokens,
        "mask": segment_ids != 0,
        "segment_ids": segment_ids,
        "positions": positions,
    }
    got = np.asarray(_values(config, params, packed))
    start = 0
    for seq in seqs:
        alone = {"tokens": seq[None], "mask": np.ones((1, len(seq)), bool)}
        want = np.asarray(_values(config, params, alone))[0]
        err = np.abs(got[0, start : start + len(seq)] - want).max()
        assert err <= 1e-5, f"segment at column {start}: max |dvalue| = {err}"
        start += len(seq)


# -------------------------------------------------------------- round trips
def test_save_critic_hf_loads_in_transformers_and_back(hf_critic, tmp_path):
    family, _, _, config, params = hf_critic
    out = tmp_path / "critic"
    PR.save_critic_hf(str(out), config, params)

    with open(out / "config.json") as f:
        hf_config = json.load(f)
    assert hf_config["architectures"] == [HF_CLASSES[family][1].__name__]
    ref = _load_reference(out)
    assert type(ref) is HF_CLASSES[family][1] and ref.config.num_labels == 1
    assert ref.score.bias is not None and not hasattr(ref, "lm_head")
    names = set(PR._Tensors(str(out)).names())
    assert {"score.weight", "score.bias"} <= names and "lm_head.weight" not in names
    assert PR._Tensors(str(out)).shape("score.weight") == (1, config.d_model)

    tokens, mask = _left_padded(np.random.default_rng(2), config.vocab_size, LENGTHS)
    want = _hf_values(ref, tokens, mask)
    got = np.asarray(_values(config, params, {"tokens": tokens, "mask": mask}))
    assert np.abs(got - want)[mask].max() <= 1e-4

    _assert_trees_equal(params, PR.load_critic_hf(str(out), config))


def test_load_critic_hf_straight_into_the_critics_shardings(hf_critic):
    _, path, _, config, plain = hf_critic
    mesh = sharding.make_mesh(data=1, fsdp=8)
    shardings = critic.state_shardings(config, optax.identity(), mesh).params
    sharded = PR.load_critic_hf(path, config, shardings=shardings)
    _assert_trees_equal(plain, sharded)
    for a, s in zip(jax.tree.leaves(sharded), jax.tree.leaves(shardings)):
        assert a.sharding == s


# ------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def saved_critic(tmp_path_factory):
    """A Qwen2 critic as transformers saves it, and its config."""
    path = str(tmp_path_factory.mktemp("saved_critic"))
    _hf_critic("qwen2").save_pretrained(path)
    return path, CONFIGS["qwen2"]


def _copy(src, dst, edit_config=None, edit_tensors=None):
    from safetensors.numpy import save_file

    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    if edit_config:
        edit_config(hf)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(hf, f)
    tensors = PR._Tensors(src)
    data = {n: np.array(tensors.get(n)) for n in tensors.names()}
    if edit_tensors:
        edit_tensors(data)
    save_file(data, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_a_causal_lm_checkpoint_is_refused_with_the_way_to_start_one(hf_tiny_dir):
    config = PR.read_config(hf_tiny_dir, dtype="float32")
    with pytest.raises(ValueError, match=r"no value head.*critic.from_policy"):
        PR.load_critic_hf(hf_tiny_dir, config)


def test_other_label_counts_are_refused(saved_critic, tmp_path):
    src, config = saved_critic

    def two_labels(hf):
        hf.pop("num_labels", None)
        hf["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}

    path = _copy(src, str(tmp_path / "two"), edit_config=two_labels)
    with pytest.raises(ValueError, match="num_labels=2"):
        PR.load_critic_hf(path, config)

    # Without num_labels or id2label transformers assumes two labels.
    def unset(hf):
        for key in ("num_labels", "id2label", "label2id"):
            hf.pop(key, None)

    path = _copy(src, str(tmp_path / "unset"), edit_config=unset)
    with pytest.raises(ValueError, match="num_labels=2"):
        PR.load_critic_hf(path, config)


def test_missing_bias_and_extra_tensors_are_named(saved_critic, tmp_path):
    src, config = saved_critic
    path = _copy(
        src, str(tmp_path / "nobias"), edit_tensors=lambda d: d.pop("score.bias")
    )
    with pytest.raises(ValueError, match=r"no value head \(missing \['score.bias'\]"):
        PR.load_critic_hf(path, config)

    def add_head(d):
        d["lm_head.weight"] = np.array(d["model.embed_tokens.weight"])

    path = _copy(src, str(tmp_path / "lm_head"), edit_tensors=add_head)
    with pytest.raises(ValueError, match=r"unexpected tensors \['lm_head.weight'\]"):
        PR.load_critic_hf(path, config)


def test_another_architecture_is_refused_by_field(saved_critic):
    path, config = saved_critic
    with pytest.raises(ValueError, match=r"rope_theta=10000.0 \(expected 1000000.0\)"):
        PR.load_critic_hf(path, config.replace(rope_theta=1e6))
    # Run-time fields may differ.
    params = PR.load_critic_hf(path, config.replace(dtype="bfloat16", remat=True))
    assert params["value_head"]["kernel"].shape == (config.d_model, 1)


# --------------------------------------------------------------- from_policy
@pytest.mark.parametrize("tied", [True, False])
def test_from_policy_of_a_causal_lm_checkpoint(tmp_path, tied):
    # d_model 256: the fresh head's 256 draws pin its spread to ~5%.
    path = hf_fixtures.make_checkpoint(
        tmp_path, seed=4, tie_word_embeddings=tied, hidden_size=256, head_dim=64
    )
    config, policy = PR.load_hf(path, np.float32, compute_dtype="float32")
    assert ("lm_head" in policy) == (not tied)
    params = critic.from_policy(config, policy, jax.random.key(0))

    body = {k: v for k, v in policy.items() if k != "lm_head"}
    _assert_trees_equal(body, params["decoder"])
    head = params["value_head"]
    assert head["kernel"].shape == (config.d_model, 1)
    np.testing.assert_array_equal(np.asarray(head["bias"]), np.zeros(1, np.float32))
    std = float(np.std(np.asarray(head["kernel"])))
    assert 0.015 < std < 0.025, f"head kernel std {std}, want ~0.02"
    assert abs(float(np.mean(np.asarray(head["kernel"])))) < 0.005
    assert jax.tree.structure(params) == jax.tree.structure(
        critic.abstract_params(config)
    )

    # The values are the head on the policy's own final hidden states.
    tokens, mask = _left_padded(np.random.default_rng(3), config.vocab_size, (11, 4))
    x_btd, _ = M.hidden(config, policy, tokens, mask_bt=mask)
    want = np.asarray(x_btd) @ np.asarray(head["kernel"])[:, 0]
    got = np.asarray(_values(config, params, {"tokens": tokens, "mask": mask}))
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)
