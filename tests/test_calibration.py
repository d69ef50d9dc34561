"""The calibration file: measured over roofline per kind, on one chip."""

import json

import pytest

from rlvr_jax.planning import calibration as cal


def _measured() -> cal.Calibration:
    return cal.Calibration(
        chip="h100",
        device_kind="NVIDIA H100 80GB HBM3",
        kinds={"sampling": (3.0, 2.0), "update": (5.0, 4.0)},
        jax="0.10.2",
        notes=("16 prompts x 8",),
    )


def test_a_written_calibration_reads_back_and_scales_each_part_by_its_kind(
    tmp_path,
):
    path = str(tmp_path / "c" / "calibration.json")
    cal.write(_measured(), path)
    back = cal.read(path)
    assert back == _measured()
    assert back.factor("sampling") == 1.5 and back.factor("logprobs") is None
    # Evaluation is sampling; PPO's critic is an update; an unmeasured kind
    # gives no expected time rather than a guess.
    assert back.expected(
        {
            "sampling": 10.0,
            "logprob_passes": 2.0,
            "critic": 4.0,
            "update": 8.0,
            "evaluation": 1.0,
        }
    ) == {
        "sampling": 15.0,
        "logprob_passes": None,
        "critic": 5.0,
        "update": 10.0,
        "evaluation": 1.5,
    }
    back.check_chip("h100")
    with pytest.raises(cal.CalibrationError, match="measured on h100.*for v5e"):
        back.check_chip("v5e")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="other/1"), "not a calibration file"),
        (lambda d: d.update(chip=""), "'chip' must be"),
        (lambda d: d.update(kinds={}), "at least one kind"),
        (lambda d: d["kinds"].update(decode={"measured_s": 1, "roofline_s": 1}),
         "unknown calibration kind 'decode'"),
        (lambda d: d["kinds"]["update"].update(measured_s=0), "update.measured_s"),
        (lambda d: d["kinds"]["update"].update(roofline_s=float("nan")),
         "update.roofline_s"),
        (lambda d: d["kinds"]["update"].update(measured_s=True), "update.measured_s"),
        (lambda d: d["kinds"].update(update=[1, 2]), "must be an object"),
    ],
)  # fmt: skip
def test_a_malformed_calibration_is_refused_with_its_reason(tmp_path, edit, message):
    data = _measured().to_json()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(cal.CalibrationError, match=message):
        cal.read(str(path))


def test_an_unreadable_calibration_names_the_file(tmp_path):
    (tmp_path / "half.json").write_text('{"format": ')
    for name in ("half.json", "absent.json"):
        with pytest.raises(cal.CalibrationError, match=name):
            cal.read(str(tmp_path / name))
