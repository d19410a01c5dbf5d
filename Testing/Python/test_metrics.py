"""The paper's measures on crafted cases whose answers are worked out by hand, and the evaluator."""

import csv
import json
import os

import numpy as np
import pytest

from training import evaluate as ev
from training import metrics

# Five lumbar vertebrae 30 mm apart along z.
TRUTH = {"L1": [0, 0, 0], "L2": [0, 0, -30], "L3": [0, 0, -60], "L4": [0, 0, -90], "L5": [0, 0, -120]}
PRED = {
    "T12": [0, 0, 35],     # extra: no ground truth (and 34 mm from L1, farther than L1's prediction)
    "L1": [0, 0, 1],       # right, 1 mm off
    "L2": [0, 0, -60],     # L2 and L3 swapped
    "L3": [0, 0, -30],
    "L4": [25, 0, -90],    # right name, 25 mm off
    # L5: no prediction
}


def by_name(case):
    return {v.name: v for v in case.vertebrae}


def test_crafted_case_by_hand():
    case = metrics.evaluate_case(PRED, TRUTH, "crafted")
    v = by_name(case)
    assert v["L1"].identified and v["L1"].error_mm == pytest.approx(1.0)
    # Swap: the closest prediction to L2 is the one named L3 (0 mm), so not identified; error 30.
    assert not v["L2"].identified and v["L2"].closest_name == "L3" and v["L2"].error_mm == pytest.approx(30.0)
    assert not v["L3"].identified and v["L3"].error_mm == pytest.approx(30.0)
    # 25 mm miss: right name and closest, but beyond 20 mm.
    assert v["L4"].closest_name == "L4" and not v["L4"].identified and v["L4"].error_mm == pytest.approx(25.0)
    # Missing: no error, and the closest prediction is L4's (sqrt(25^2 + 30^2) mm away).
    assert v["L5"].error_mm is None and not v["L5"].identified
    assert v["L5"].closest_distance_mm == pytest.approx(np.hypot(25, 30))
    assert case.extra == ["T12"] and case.n_identified == 1

    stats = metrics.summarize([case])
    assert stats["all"].n_truth == 5 and stats["all"].id_rate == pytest.approx(20.0)
    assert stats["all"].n_localised == 4
    # errors 1, 30, 30, 25: mean 21.5; population std sqrt(577 / 4).
    assert stats["all"].mean_error_mm == pytest.approx(21.5)
    assert stats["all"].std_error_mm == pytest.approx(np.sqrt(577 / 4))
    assert stats["all"].max_error_mm == pytest.approx(30.0)
    assert stats["lumbar"].id_rate == pytest.approx(20.0)
    assert stats["cervical"].n_truth == 0 and stats["cervical"].id_rate is None
    assert stats["cervical"].mean_error_mm is None


def test_extra_prediction_closer_than_the_right_one_blocks_identification():
    case = metrics.evaluate_case({"L1": [0, 0, 5], "T12": [0, 0, -2]}, {"L1": [0, 0, 0]})
    v = by_name(case)["L1"]
    assert not v.identified and v.closest_name == "T12" and v.error_mm == pytest.approx(5.0)


def test_boundary_and_ties():
    # Exactly 20 mm is not "less than 20 mm".
    assert not metrics.evaluate_case({"L1": [20, 0, 0]}, {"L1": [0, 0, 0]}).vertebrae[0].identified
    assert metrics.evaluate_case({"L1": [19.99, 0, 0]}, {"L1": [0, 0, 0]}).vertebrae[0].identified
    # Two predictions at the same distance: the right name wins.
    tie = metrics.evaluate_case({"L2": [0, 0, 3], "L1": [0, 0, -3]}, {"L1": [0, 0, 0]})
    assert tie.vertebrae[0].identified
    # No predictions at all.
    empty = metrics.evaluate_case({}, {"C1": [0, 0, 0], "S1": [0, 0, -500]})
    assert [v.identified for v in empty.vertebrae] == [False, False]
    assert metrics.summarize([empty])["all"].mean_error_mm is None


def test_regions_over_several_cases():
    a = metrics.evaluate_case({"C2": [0, 0, 2], "T5": [0, 0, -100]}, {"C2": [0, 0, 0], "T5": [0, 0, -103]}, "a")
    b = metrics.evaluate_case({"S1": [4, 0, 0]}, {"S1": [0, 0, 0], "S2": [0, 0, -22]}, "b")
    stats = metrics.summarize([a, b])
    assert stats["cervical"].id_rate == 100.0 and stats["cervical"].mean_error_mm == pytest.approx(2.0)
    assert stats["thoracic"].mean_error_mm == pytest.approx(3.0)
    assert stats["sacral"].n_truth == 2 and stats["sacral"].id_rate == pytest.approx(50.0)
    assert stats["sacral"].mean_error_mm == pytest.approx(4.0) and stats["sacral"].std_error_mm == 0.0
    assert stats["all"].id_rate == pytest.approx(75.0)
    assert stats["all"].mean_error_mm == pytest.approx(3.0)


def test_classification_map_by_hand():
    probabilities = [{"L1": 0.9, "L2": 0.8}, {"L1": 0.4, "L2": 0.7}, {"L1": 0.6}]
    present = [{"L1", "L2"}, {"L1", "L2"}, {"L2"}]
    value, ap = metrics.classification_map(probabilities, present)
    # L1: ranking 0.9(+), 0.6(-), 0.4(+) -> AP = 0.5 * 1 + 0.5 * 2/3.
    assert ap["L1"] == pytest.approx(0.5 + 1 / 3)
    # L2 is present everywhere (case 3 has no score: counts as 0): precision stays 1.
    assert ap["L2"] == pytest.approx(1.0)
    assert set(ap) == {"L1", "L2"}  # classes without a positive are left out
    assert value == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
    assert metrics.classification_map([{}], [set()]) == (None, {})
    with pytest.raises(ValueError):
        metrics.classification_map([{}], [])


def test_table_and_writers(tmp_path):
    case = metrics.evaluate_case(PRED, TRUTH, "crafted")
    stats = metrics.summarize([case])
    table = metrics.format_table(stats, method="Crafted", map_value=0.875)
    assert "Id. Rate" in table and "Crafted" in table and "21.5(12.0)" in table and "87.5 %" in table
    for short in ("ALL", "Cer.", "Tho.", "Lum.", "Sac."):
        assert short in table

    metrics.write_case_csv(str(tmp_path / "cases.csv"), [case])
    rows = list(csv.DictReader(open(tmp_path / "cases.csv")))
    assert rows[0]["case_id"] == "crafted" and rows[0]["n_identified"] == "1"
    assert rows[0]["missed"] == "L5" and rows[0]["misidentified"] == "L2 L3 L4" and rows[0]["extra"] == "T12"
    assert float(rows[0]["mean_error_mm"]) == pytest.approx(21.5)

    metrics.write_vertebra_csv(str(tmp_path / "vertebrae.csv"), [case])
    vrows = list(csv.DictReader(open(tmp_path / "vertebrae.csv")))
    assert [r["name"] for r in vrows] == ["L1", "L2", "L3", "L4", "L5"]
    assert vrows[4]["error_mm"] == "" and vrows[0]["identified"] == "True"

    metrics.write_summary_json(str(tmp_path / "s.json"), stats, 0.5, {"L1": 0.5}, {"data": ["x"]})
    data = json.load(open(tmp_path / "s.json"))
    assert data["all"]["id_rate"] == pytest.approx(20.0) and data["mAP"] == 0.5 and data["data"] == ["x"]


# --------------------------------------------------------------------------- the evaluator

def make_case(case_id, truth, partial=()):
    return ev.EvaluationCase(case_id, lambda: case_id, {k: np.asarray(v, float) for k, v in truth.items()},
                             list(partial))


def test_evaluate_with_a_fake_labeler(tmp_path):
    cases = [make_case("a", {"L1": [0, 0, 0], "L2": [0, 0, -30]}, partial=["L2"]),
             make_case("b", {"T12": [0, 0, 30]}),
             make_case("broken", {"L5": [0, 0, -120]})]

    def labeler(image_id):
        if image_id == "broken":
            raise RuntimeError("no spine")
        truth = next(c.centroids for c in cases if c.case_id == image_id)
        return ({k: v + np.array([1.0, 0, 0]) for k, v in truth.items()}, {k: 0.9 for k in truth})

    run = ev.evaluate(cases, labeler, progress=False)
    stats = run.summary()
    assert stats["all"].n_truth == 4 and stats["all"].id_rate == pytest.approx(75.0)
    assert stats["all"].mean_error_mm == pytest.approx(1.0)
    assert "broken" in run.failures and "no spine" in run.failures["broken"]
    whole = ev.evaluate(cases, labeler, whole_only=True, progress=False).summary()
    assert whole["all"].n_truth == 3  # the partial L2 is left out

    table = ev.write_outputs(run, str(tmp_path), method="Fake", extra={"data": ["fake"]})
    assert "Fake" in table
    for name in ("table.txt", "cases.csv", "vertebrae.csv", "predictions.json", "summary.json"):
        assert os.path.isfile(tmp_path / name)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["n_cases"] == 3 and "broken" in summary["failures"] and summary["data"] == ["fake"]
    predictions = json.load(open(tmp_path / "predictions.json"))
    assert predictions["a"]["predicted_lps"]["L1"] == [1.0, 0.0, 0.0] and predictions["a"]["partial"] == ["L2"]


def test_cli_runs_on_the_sample_case(tmp_path, capsys, sample_case_dir):
    rc = ev.main(["--data", f"labelmap:{sample_case_dir}", "--out", str(tmp_path), "--no-progress",
                  "--device", "cpu", "--whole-only"])
    out = capsys.readouterr().out
    assert rc == 0 and "Id. Rate" in out
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["all"]["n_truth"] == 6  # L1-L5 and S1 are whole; T11, T12 are cut
    assert summary["whole_only"] is True


def test_cli_needs_data():
    with pytest.raises(SystemExit):
        ev.main([])
    with pytest.raises(SystemExit):
        ev.main(["--data", "nonsense:/x"])


def test_synthetic_cases_use_the_generator(monkeypatch):
    import importlib
    import types

    synthetic = importlib.import_module("training.synthetic")

    def fake_generate_case(seed):
        return types.SimpleNamespace(image=f"image{seed}", centroids={"L5": [0, 0, seed], "L6": [0, 0, -1]})

    monkeypatch.setattr(synthetic, "generate_case", fake_generate_case, raising=False)
    cases = list(ev.synthetic_cases(2, 40))
    assert [c.case_id for c in cases] == ["synthetic_40", "synthetic_41"]
    assert list(cases[0].centroids) == ["L5"] and any("L6" in n for n in cases[0].notes)
    run = ev.evaluate(ev.synthetic_cases(2, 40), lambda image: ({"L5": np.array([0, 0, int(image[5:])])}, {}),
                      progress=False)
    assert run.summary()["all"].id_rate == 100.0
