"""Response-length mixes and the step priced at one, without compiling: the
sources (`planning.lengths`), the replayed decode steps and their widths and
the learner's packed rows (`planning.mix`), and the train loop's per-step
lengths file (`metrics.LengthsWriter`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlvr_jax import io as io_lib
from rlvr_jax import metrics as metrics_lib
from rlvr_jax.planning import lengths as lengths_lib
from rlvr_jax.planning import mix as mix_lib
from rlvr_jax.rollout import engine


# ------------------------------------------------------------------ sources
def test_the_packaged_mix_is_the_measured_file():
    mix = lengths_lib.parse(None)
    assert mix is not None and "packaged" in mix.name
    assert len(mix.groups) == 100 and all(len(g) == 8 for g in mix.groups)
    assert mix.lengths.max() == 2109
    assert 300 <= np.median(mix.lengths) <= 400
    with open(lengths_lib.PACKAGED) as f:
        assert "One-Shot-RLVR" in json.load(f)["description"]
    assert lengths_lib.parse("max") is None


def test_a_file_of_groups_or_a_flat_list(tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"groups": [[1, 2], [3, 4]]}))
    mix = lengths_lib.parse(str(groups))
    assert [g.tolist() for g in mix.groups] == [[1, 2], [3, 4]]
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps([5, 6, 7]))
    assert lengths_lib.parse(str(flat)).lengths.tolist() == [5, 6, 7]
    assert lengths_lib.parse(str(flat)).groups is None
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"lengths": [9]}))
    assert lengths_lib.parse(str(keyed)).lengths.tolist() == [9]


def test_whole_groups_are_drawn_and_long_ones_capped(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"groups": [[1, 1, 1, 1], [50, 60, 70, 80]]}))
    mix = lengths_lib.parse(str(path))
    drawn, capped = lengths_lib.draw(mix, 40, 4, cap=65, seed=3)
    assert drawn.shape == (40,) and drawn.max() == 65
    for group in drawn.reshape(10, 4).tolist():
        assert group in ([1, 1, 1, 1], [50, 60, 65, 65])
    assert capped == 2 * sum(
        g == [50, 60, 65, 65] for g in drawn.reshape(10, 4).tolist()
    )
    again, _ = lengths_lib.draw(mix, 40, 4, cap=65, seed=3)
    assert (again == drawn).all()  # seeded
    # Groups of another size than n: lengths one at a time.
    drawn, _ = lengths_lib.draw(mix, 7, 3, cap=100)
    assert drawn.shape == (7,) and set(drawn.tolist()) <= {1, 50, 60, 70, 80}


def test_a_lognormal_has_its_median_and_p99():
    mix = lengths_lib.parse("lognormal:median=350,p99=1600")
    drawn, capped = lengths_lib.draw(mix, 20000, 8, cap=3072, seed=0)
    assert np.median(drawn) == pytest.approx(350, rel=0.05)
    assert np.percentile(drawn, 99) == pytest.approx(1600, rel=0.08)
    assert drawn.min() >= 1 and drawn.max() == 3072 and capped > 0


def test_a_workdir_gives_its_last_steps_as_groups(tmp_path):
    writer = metrics_lib.LengthsWriter(str(tmp_path))
    for step in range(1, 5):
        writer.write(step, [step] * 3 + [10 * step] * 3, n=3)
    mix = lengths_lib.parse(str(tmp_path), steps=2)
    assert [g.tolist() for g in mix.groups] == [[3] * 3, [30] * 3, [4] * 3, [40] * 3]
    assert "steps 3-4" in mix.name


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "cannot read lengths"),
        (json.dumps({"groups": [[1, -2]]}), "positive integers"),
        (json.dumps({"groups": []}), "non-empty list"),
        (json.dumps([]), "non-empty list"),
        (json.dumps([1.5]), "positive integers"),
        (json.dumps({"other": 1}), "expected"),
    ],
)
def test_a_bad_file_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        lengths_lib.parse(str(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "source, message",
    [
        ("/no/such/lengths.json", "not a file, a workdir"),
        ("lognormal:median=5", "lognormal:median=M,p99=P"),
        ("lognormal:median=x,p99=9", "lognormal:median=M,p99=P"),
        ("lognormal:median=500,p99=100", "0 < median < p99"),
    ],
)
def test_a_bad_source_is_one_clear_line(source, message):
    with pytest.raises(ValueError, match=message) as e:
        lengths_lib.parse(source)
    assert "\n" not in str(e.value)


def test_a_workdir_without_lengths_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no response_lengths.jsonl"):
        lengths_lib.parse(str(tmp_path))


# ------------------------------------------------------ the lengths file
def test_lengths_are_appended_and_a_resume_drops_the_replayed_steps(tmp_path):
    path = tmp_path / metrics_lib.LENGTHS_FILE
    writer = metrics_lib.LengthsWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(step, np.array([step, 7], np.int32), n=2)
    with open(path, "a") as f:
        f.write('{"step": 4, "n": 2, "len')  # a crash mid-line
    rows = io_lib.read_log(path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0] == {"step": 1, "n": 2, "lengths": [1, 7]}
    # Resumed from the checkpoint of step 2: step 3 will run again.
    writer = metrics_lib.LengthsWriter(str(tmp_path), resume_step=2)
    assert [r["step"] for r in io_lib.read_log(path)] == [1, 2]
    writer.write(3, [9, 9], n=2)
    rows = io_lib.read_log(path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["lengths"] == [9, 9]
    # A fresh run starts the file over.
    metrics_lib.LengthsWriter(str(tmp_path))
    assert io_lib.read_log(path) == []


# ------------------------------------------------------------ the replay
@pytest.mark.parametrize(
    "refill_every, steps, longest",
    [
        # Slots take rows 0 and 1; row 1 ends at its first token, row 2
        # takes its slot. Every 8 steps: steps 1-2 decode rows 0 and 2 (the
        # longest had 1, then 2 tokens), then nothing is live and row 3
        # takes slot 0 alone: 4 steps at 1, 2, 3, 4 tokens.
        (8, 6, {1: 2, 2: 2, 3: 1, 4: 1}),
        # Every step: row 3 takes row 2's slot after step 1, beside row 0.
        (1, 5, {1: 1, 2: 2, 3: 1, 4: 1}),
    ],
)
def test_the_replay_counts_decode_steps_and_the_longest_live_row(
    refill_every, steps, longest
):
    from rlvr_jax.rollout import scheduler

    out = scheduler.replay(np.array([3, 1, 2, 5]), 2, refill_every)
    assert int(out.decode_steps) == steps
    hist = np.asarray(out.longest_l)
    assert {i: int(c) for i, c in enumerate(hist) if c} == longest
    # What a decode step reads: whole blocks up to the longest live row.
    d = mix_lib.decoding(
        np.array([3, 1, 2, 5]), 2, 6, 10, "tpu", refill_every=refill_every
    )
    block, width = mix_lib.cache_width(6, 10, "tpu")
    assert (block, width) == (16, 16)  # narrower than a block: one block
    assert d.steps == steps and d.mean_width == 16


def test_decode_widths_follow_the_attention_blocks():
    """Prompt width 100, 400 new tokens: 128-column blocks; a step whose
    longest live row has l tokens reads ceil((100 + l) / 128) blocks."""
    lengths = np.array([300, 30])
    d = mix_lib.decoding(lengths, 1, 100, 400, "tpu")
    assert d.steps == 299 + 29  # one slot: every row after the other
    want = [engine.attended_columns(100, k, 128) for k in range(1, 300)]
    want += [engine.attended_columns(100, k, 128) for k in range(1, 30)]
    assert d.mean_width == pytest.approx(np.mean(want))
    assert set(want) == {128, 256, 384, 512}
    # CPU: one block, the whole cache, every step.
    assert mix_lib.decoding(lengths, 1, 100, 400, "cpu").mean_width == 500


def test_every_row_at_max_is_waves_of_full_length():
    """A check that can fail: all rows at max_new_tokens replay as ceil(R/S)
    waves of max_new_tokens - 1 steps (refills every 8 steps or not), at the
    mean of the block-rounded fills 1 .. max_new_tokens - 1."""
    new, t = 300, 64
    for rows, slots in ((16, 8), (20, 8)):
        d = mix_lib.decoding(np.full(rows, new), slots, t, new, "tpu")
        assert d.steps == -(-rows // slots) * (new - 1)
        want = np.mean([engine.attended_columns(t, k, 128) for k in range(1, new)])
        assert d.mean_width == pytest.approx(want)


def test_a_decode_line_is_affine_in_the_width():
    line = mix_lib.Line(100, 10.0, 1000.0, 300, 30.0, 5000.0)
    assert line.at(100) == (10.0, 1000.0)
    assert line.at(200) == (20.0, 3000.0)
    assert line.at(400) == (40.0, 7000.0)


def _rollout(rows=64, slots=16, new=512):
    line = mix_lib.Line(192, 2e9, 3e9, 64 + new, 2.5e9, 5e9)
    return mix_lib.RolloutCost(1e10, 2e10, line, rows, slots, 64, new, "tpu")


def test_the_mix_costs_at_most_all_at_max_and_the_same_at_max():
    rollout = _rollout()
    at_max = rollout.at(rollout.replay())
    mix = lengths_lib.parse(None)
    drawn, _ = lengths_lib.draw(mix, 64, 8, cap=512)
    at_mix = rollout.at(rollout.replay(drawn))
    assert at_mix[0] < at_max[0] and at_mix[1] < at_max[1]
    full = rollout.at(rollout.replay(np.full(64, 512)))
    assert full == at_max
    # All at max by hand: the program and 4 waves × 511 steps but its one.
    d = rollout.replay()
    assert d.steps == 4 * 511
    step = rollout.line.at(d.mean_width)
    assert at_max[1] == pytest.approx(2e10 + (4 * 511 - 1) * step[1])


def test_the_learner_packs_the_mix_into_fewer_rows():
    """Sequences of 128-token prompts + responses, packed as the learner
    packs them (rows of 1,024, 2 rows per device of a 4-device split)."""
    responses = np.array([896] * 4 + [100] * 28)
    packed = mix_lib.packed(128 + responses, 1024, 2048, 4)
    assert packed.width == 1024
    # 4 full rows; 28 sequences of 228 tokens, 4 per row: 7 rows; 11 → 12
    # rows (a multiple of 4 devices), in micro-batches of 8 rows.
    assert packed.rows == 16 and packed.micro_batches == 2
    assert mix_lib.learner_fraction(packed, 32, 1024) == 0.5
    widest = mix_lib.packed(np.full(32, 1024), 1024, 2048, 4)
    assert mix_lib.learner_fraction(widest, 32, 1024) == 1.0
