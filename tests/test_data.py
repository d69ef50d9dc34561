"""Data loading, selection, replication, the resumable iterator and prompts."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr_jax.data import examples as D
from rlvr_jax.data import paper_data
from rlvr_jax.data import tokenizer as T

# docs/recipe.md: the exact training prompt of a user-only conversation.
PI1_PREFIX = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer "
    "within \\boxed{}.<|im_end|>\n<|im_start|>user\nThe pressure \\( P \\) exerted"
)
PI1_END = (
    " Let's think step by step and output the final answer within \\boxed{}."
    "<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def pool():
    return D.load_examples("dsr_sub")  # the packaged pool, by name


def test_verl_parquet_and_jsonl_agree(pool, tmp_path):
    assert len(pool) == 1209
    rows = pq.read_table(paper_data.path("dsr_sub")).to_pylist()
    jsonl = tmp_path / "dsr_sub.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert D.load_examples(str(jsonl)) == pool


def test_select_pi1_equals_the_replicated_reference_file(pool):
    pi1 = D.select(pool, [124])
    assert pi1[0].ground_truth == "12.8"
    stored = D.load_examples(paper_data.path("pi1_r128"))
    assert D.replicate(pi1, 128) == stored


def test_select_and_replicate_errors(pool):
    with pytest.raises(ValueError, match=r"not in the dataset: \[99999\]"):
        D.select(pool, [124, 99999])
    two = D.select(pool, [124, 682])
    rows = D.replicate(two, 128)
    assert [r.index for r in rows].count(682) == 64
    with pytest.raises(ValueError, match="not a multiple"):
        D.replicate(two, 127)


def test_prompt_renders_exactly_as_recipe(pool):
    tok = T.build_tiny()
    text = D.render_prompt(tok, D.select(pool, [124])[0].messages)
    assert text.startswith(PI1_PREFIX) and text.endswith(PI1_END)
    assert text.count("Let's think step by step") == 1


def test_prompt_too_long_names_the_example(pool):
    tok = T.build_tiny()
    with pytest.raises(ValueError, match=r"example index 124: prompt has \d+ tokens"):
        D.encode_prompts(tok, D.select(pool, [124]), max_prompt_len=50)


def test_batches_shuffle_drop_last_and_resume(pool):
    a = D.Batches(pool, 128, seed=3)
    seen = [tuple(e.index for e in a.next()) for _ in range(12)]
    # 1209 // 128 = 9 full batches per epoch: the 10th starts epoch 1.
    assert a.state() == {"epoch": 1, "position": 3 * 128}
    first_epoch = [i for b in seen[:9] for i in b]
    assert len(set(first_epoch)) == 9 * 128
    b = D.Batches(pool, 128, seed=3)
    b.restore({"epoch": 0, "position": 5 * 128})
    assert [tuple(e.index for e in b.next()) for _ in range(7)] == seen[5:12]
    assert seen != [tuple(e.index for e in D.Batches(pool, 128, seed=4).next())]


def test_jsonl_problem_answer_and_hf_dir(tmp_path):
    rows = [
        {"problem": "1+1?", "answer": 2.0},
        {"question": "x?", "final_answer": ["$5$"]},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ex = D.load_examples(str(path), suffix=" Go.")
    assert [e.ground_truth for e in ex] == ["2", "$5$"]
    assert ex[0].messages[0]["content"] == "1+1? Go."
    # A hub-snapshot style directory of parquet files.
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:1]), hub / "train.parquet")
    assert D.load_examples(str(tmp_path / "hub"))[0].ground_truth == "2"


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.parquet' is not a file"):
        D.load_examples(str(tmp_path / "missing.parquet"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        D.load_examples(str(bad))
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"text": "no fields"}\n')
    with pytest.raises(ValueError, match=r"odd.jsonl:1: row has neither"):
        D.load_examples(str(odd))
    with pytest.raises(ValueError, match="fewer than one batch"):
        D.Batches(D.builtin_task(), 2, seed=0)


def test_tiny_tokenizer_round_trips_and_boxes_are_single_tokens():
    tok = T.build_tiny()
    assert len(tok) == 128
    text = "x = 3, so the answer is \\boxed{7}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert "\\boxed{7}" in tok.convert_ids_to_tokens(ids)
    stops = T.stop_token_ids(tok)
    assert set(tok.convert_ids_to_tokens(list(stops))) == {
        "<|im_end|>",
        "<|endoftext|>",
    }
    assert T.build_tiny()(text)["input_ids"] == tok(text)["input_ids"]


# ------------------------------------------------------------------ sources
def test_packaged_names_resolve_and_paths_win(tmp_path, monkeypatch):
    assert D.resolve_source("dsr_sub") == paper_data.path("dsr_sub")
    assert len(D.load_examples("math500")) == 500  # the veRL validation file
    # A local file of the same name is the user's, not the package's.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dsr_sub").mkdir()
    (tmp_path / "dsr_sub" / "mine.jsonl").write_text(
        json.dumps({"problem": "1+1?", "answer": "2"}) + "\n"
    )
    assert [ex.ground_truth for ex in D.load_examples("dsr_sub")] == ["2"]


def test_hub_dataset_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub

    # The hub cache layout: refs/main names the snapshot that holds the files.
    repo = tmp_path / "hub" / "datasets--someone--pi1"
    snapshot = repo / "snapshots" / "0123abcd"
    (snapshot / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    rows = pq.read_table(paper_data.path("pi1_r128")).slice(0, 3)
    pq.write_table(rows, snapshot / "data" / "train.parquet")
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub")
    )
    examples = D.load_examples("someone/pi1")
    assert [ex.index for ex in examples] == [124, 124, 124]
    with pytest.raises(FileNotFoundError, match="not a file or directory, a packaged"):
        D.load_examples("someone/not-cached")
    with pytest.raises(FileNotFoundError, match="dsr_sub, math500, pi1_r128"):
        D.load_examples("/no/such/file.parquet")
