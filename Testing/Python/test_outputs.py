"""Output files: Slicer markups JSON (schema-valid), VerSe JSON and CSV."""

import csv
import json
import os
import re

import jsonschema
import numpy as np
import pytest
from conftest import SCHEMAS, make_ct

from VertebraeLabeling.VertebraeLabelingLib.inference import LabeledVertebra, LabelingResult
from VertebraeLabeling.VertebraeLabelingLib.outputs import (
    verse_to_lps,
    write_csv,
    write_markups_json,
    write_verse_json,
)
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import VERSE_ID

SCHEMA = os.path.join(SCHEMAS, "markups-schema-v1.0.3.json")
SLICER_SCHEMA_PATTERN = r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$"


@pytest.fixture()
def result():
    return LabelingResult(vertebrae=[
        LabeledVertebra("L1", np.array([1.5, -20.0, 300.25]), 0.97),
        LabeledVertebra("L2", np.array([2.0, -22.0, 270.0]), 0.42),
        LabeledVertebra("S2", np.array([3.0, -10.0, 200.0]), 0.8),
    ])


def test_markups_json_validates_and_slicer_accepts_its_schema_url(tmp_path, result):
    path = tmp_path / "out.mrk.json"
    write_markups_json(result, str(path))
    doc = json.loads(path.read_text())
    assert re.match(SLICER_SCHEMA_PATTERN, doc["@schema"])
    with open(SCHEMA, encoding="utf-8") as f:
        jsonschema.validate(doc, json.load(f))
    node = doc["markups"][0]
    assert node["type"] == "Fiducial" and node["coordinateSystem"] == "LPS"
    labels = [p["label"] for p in node["controlPoints"]]
    assert labels == ["L1", "L2", "S2"]
    assert node["controlPoints"][0]["position"] == [1.5, -20.0, 300.25]
    assert "0.97" in node["controlPoints"][0]["description"]
    assert not any(p["locked"] for p in node["controlPoints"])


def test_markups_in_ras_flip_x_and_y(tmp_path, result):
    path = tmp_path / "ras.mrk.json"
    write_markups_json(result, str(path), coordinate_system="RAS")
    doc = json.loads(path.read_text())
    assert doc["markups"][0]["controlPoints"][0]["position"] == [-1.5, 20.0, 300.25]


def test_verse_json_round_trips_and_uses_verse_ids(tmp_path, result):
    img = make_ct(spacing=(0.8, 0.8, 2.0), origin=(-30.0, -60.0, 180.0))
    path = tmp_path / "case_ctd.json"
    write_verse_json(result, str(path), img)
    doc = json.loads(path.read_text())
    assert doc[0] == {"direction": ["P", "I", "R"]}
    by_label = {d["label"]: d for d in doc[1:]}
    assert set(by_label) == {VERSE_ID["L1"], VERSE_ID["L2"]}  # S2 has no VerSe id
    back = verse_to_lps([by_label[20][k] for k in "XYZ"], img)
    assert np.allclose(back, [1.5, -20.0, 300.25], atol=0.01)


def test_csv_has_one_row_per_vertebra(tmp_path, result):
    path = tmp_path / "out.csv"
    write_csv(result, str(path))
    rows = list(csv.DictReader(open(path)))
    assert [r["name"] for r in rows] == ["L1", "L2", "S2"]
    assert float(rows[0]["x_ras_mm"]) == -1.5 and float(rows[1]["confidence"]) == pytest.approx(0.42)


def test_a_failed_write_leaves_the_previous_file_untouched(tmp_path, result):
    path = tmp_path / "out.mrk.json"
    path.write_text("the user's corrected file")

    class Broken:
        vertebrae = [LabeledVertebra("L1", np.array([np.nan, 0, 0]), 1.0), object()]

    with pytest.raises(Exception):
        write_markups_json(Broken(), str(path))
    assert path.read_text() == "the user's corrected file"
    assert os.listdir(tmp_path) == ["out.mrk.json"]


def test_result_files_get_ordinary_permissions(tmp_path, result):
    path = tmp_path / "out.csv"
    old = os.umask(0o022)
    try:
        write_csv(result, str(path))
    finally:
        os.umask(old)
    assert (os.stat(path).st_mode & 0o777) == 0o644
