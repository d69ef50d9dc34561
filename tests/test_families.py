"""Model families: the Llama decoder against transformers, the paper's
presets against the published config.json files, and clear refusals.

The Llama cases use `hf_fixtures.LLAMA_TINY`: no attention biases, GQA, tied
head, llama3 RoPE scaling over an original context of 16 positions; rows run
to 40 positions so every band of the scaling rule (kept, blended, stretched)
meets positions past the original context.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax import sampler as S
from rlvr_jax.model import decoder as M
from rlvr_jax.model import params as PR
from tests import hf_fixtures

HF_CONFIGS = os.path.join(os.path.dirname(__file__), "data", "hf_configs")
_forward = jax.jit(M.forward, static_argnums=0)


def _left_padded(rng, vocab, lengths):
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        tokens[row, width - n :] = rng.integers(1, vocab, n)
        mask[row, width - n :] = True
    return tokens, mask


@pytest.fixture(scope="module", params=["tied", "untied"])
def llama(request, tmp_path_factory):
    """(HF dir, our config, our params, transformers model) of a tiny Llama."""
    path = hf_fixtures.make_checkpoint(
        tmp_path_factory.mktemp(f"llama_{request.param}"),
        seed=2,
        family="llama",
        tie_word_embeddings=request.param == "tied",
    )
    config, params = PR.load_hf(path, np.float32, compute_dtype="float32")
    return path, config, params, hf_fixtures.load_reference(path)


# ------------------------------------------------------------------ config
def test_llama_config_is_read_with_its_scaling_and_without_biases(llama):
    path, config, params, ref = llama
    assert isinstance(ref, transformers.LlamaForCausalLM)
    assert config.family == "llama" and not config.attention_bias
    assert (config.rope_type, config.rope_factor, config.rope_original_max_len) == (
        "llama3",
        8.0,
        16,
    )
    assert config.rms_eps == 1e-5 and config.rope_theta == 500000.0
    assert not any(k.endswith("_bias") for k in params["layers"]["attn"])


def test_inverse_frequencies_equal_transformers_llama3_rule():
    config = M.ModelConfig.llama3_2_3b_instruct()
    hf = transformers.LlamaConfig(**_published("llama-3.2-3b-instruct"))
    fn = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"]
    want, scaling = fn(hf, "cpu")
    assert scaling == 1.0
    got = np.asarray(M.inverse_frequencies(config))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    # The rule really changes something: low frequencies are 32x lower.
    plain = np.asarray(M.inverse_frequencies(config.replace(rope_type="default")))
    assert got[-1] == pytest.approx(plain[-1] / 32, rel=1e-6)
    assert got[0] == plain[0]


# ------------------------------------------------------------------ parity
def test_llama_logits_match_transformers_past_the_original_context(llama):
    _, config, params, ref = llama
    rng = np.random.default_rng(0)
    tokens, mask = _left_padded(rng, config.vocab_size, (40, 23, 5))
    want = hf_fixtures.hf_logits(ref, tokens, mask)
    got = np.asarray(_forward(config, params, tokens, mask=mask))
    err = np.abs(got - want)[mask].max()
    assert err <= 1e-4, f"max |dlogit| = {err}"
    # Without the scaling the logits past position 16 would differ: the
    # comparison above can fail.
    plain = config.replace(rope_type="default")
    off = np.asarray(_forward(plain, params, tokens, mask=mask))
    assert np.abs(off - want)[0, 20:].max() > 1e-2


@pytest.mark.parametrize("llama", ["tied"], indirect=True)  # the head is
# covered by the logits and export tests; one sampler run suffices
def test_llama_greedy_decoding_equals_transformers_generate(llama):
    _, config, params, ref = llama
    rng = np.random.default_rng(1)
    prompts = [rng.integers(1, config.vocab_size, n).tolist() for n in (12, 3)]
    new = 30  # runs past the original context of 16
    tokens, mask = S.pad_prompts(prompts)
    with torch.no_grad():
        want = ref.generate(
            input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long),
            attention_mask=torch.as_tensor(np.asarray(mask), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=None,
            pad_token_id=0,
        )[:, tokens.shape[1] :].numpy()
    got = S.generate(
        config,
        params,
        prompts,
        max_new_tokens=new,
        temperature=0.0,
        eos_ids=(),
        seed=0,
        cache_dtype="float32",
        pad_id=0,
    )
    np.testing.assert_array_equal(got.tokens, want)


@pytest.mark.parametrize("llama", ["tied"], indirect=True)  # the head is
# covered by the logits and export tests; one sampler run suffices
def test_llama_sampler_logprobs_equal_teacher_forced(llama):
    _, config, params, _ = llama
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, config.vocab_size, n).tolist() for n in (9, 4)]
    n, new = 4, 24
    roll = S.generate(
        config,
        params,
        prompts,
        max_new_tokens=new,
        temperature=0.8,
        eos_ids=(),
        seed=3,
        n=n,
        cache_dtype="float32",
    )
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    t = tokens_bt.shape[1]
    tokens = np.concatenate([np.repeat(tokens_bt, n, 0), roll.tokens], axis=1)
    mask = np.concatenate(
        [np.repeat(mask_bt, n, 0), np.ones(roll.tokens.shape, bool)], axis=1
    )
    logits = np.asarray(_forward(config, params, tokens, mask=mask))[:, t - 1 : -1]
    scaled = logits / 0.8
    scaled = scaled - scaled.max(-1, keepdims=True)
    logp = scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, roll.tokens[..., None], -1)[..., 0]
    assert np.abs(roll.logprobs - want).max() <= 1e-5


def test_llama_export_loads_in_transformers_with_the_same_logits(llama, tmp_path):
    _, config, params, _ = llama
    PR.save_hf(str(tmp_path), config, params)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"]
    assert "model.layers.0.self_attn.q_proj.bias" not in _tensor_names(tmp_path)
    ref = transformers.LlamaForCausalLM.from_pretrained(
        str(tmp_path), attn_implementation="eager", dtype=torch.float32
    ).eval()
    assert ref.config.rope_parameters["rope_type"] == "llama3"
    tokens, mask = _left_padded(np.random.default_rng(3), config.vocab_size, (36, 7))
    want = hf_fixtures.hf_logits(ref, tokens, mask)
    got = np.asarray(_forward(config, params, tokens, mask=mask))
    assert np.abs(got - want)[mask].max() <= 1e-4
    # And back: the export reads as the same architecture.
    again, _ = PR.load_hf(str(tmp_path), np.float32, compute_dtype="float32")
    assert again == config


def _tensor_names(path) -> set[str]:
    return PR._Tensors(str(path)).names()


# ----------------------------------------------------------------- presets
PRESETS = {
    "qwen2.5-math-1.5b": (M.ModelConfig.qwen2_5_math_1_5b, 1_543_714_304),
    "qwen2.5-math-7b": (M.ModelConfig.qwen2_5_math_7b, 7_615_616_512),
    "deepseek-r1-distill-qwen-1.5b": (
        M.ModelConfig.deepseek_r1_distill_qwen_1_5b,
        1_777_088_000,
    ),
    "llama-3.2-3b-instruct": (M.ModelConfig.llama3_2_3b_instruct, 3_212_749_824),
}


def _published(name: str) -> dict:
    with open(os.path.join(HF_CONFIGS, f"{name}.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_equals_the_published_config(name):
    preset, count = PRESETS[name]
    assert preset() == M.ModelConfig.from_hf(_published(name))
    assert M.count_params(M.abstract_params(preset())) == count


def test_planner_maps_each_paper_hub_id_to_its_own_preset():
    from ml_collections import config_dict

    from rlvr_jax import build

    for hub_id, name in [
        ("Qwen/Qwen2.5-Math-1.5B", "qwen2.5-math-1.5b"),
        ("Qwen/Qwen2.5-Math-7B", "qwen2.5-math-7b"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "deepseek-r1-distill-qwen-1.5b"),
        ("meta-llama/Llama-3.2-3B-Instruct", "llama-3.2-3b-instruct"),
    ]:
        c = config_dict.ConfigDict(
            {
                "model": {
                    "path": hub_id,
                    "preset": "",
                    "dtype": "float32",
                    "param_dtype": "float32",
                }
            }
        )
        want = PRESETS[name][0](dtype="float32", param_dtype="float32")
        assert build.model_config(c) == want, hub_id


# ----------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "change,message",
    [
        ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}, "Gemma2"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"use_sliding_window": True}, "sliding-window"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "low_freq_factor",
        ),
    ],
)
def test_unsupported_llama_variants_are_refused_naming_why(change, message):
    hf = {**_published("llama-3.2-3b-instruct"), **change}
    with pytest.raises(ValueError, match=message):
        M.ModelConfig.from_hf(hf)


def test_a_qwen2_config_with_llama_features_is_not_written_as_qwen2():
    with pytest.raises(ValueError, match="q/k/v biases"):
        M.ModelConfig.tiny(attention_bias=False).to_hf()
