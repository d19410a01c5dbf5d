"""The procedural-vs-painted table is rebuilt from the committed evaluation records, as the study shows it."""

import os

from benchmarks.route_study_table import table

RECORDS = os.path.join(os.path.dirname(__file__), "..", "..", "training", "checkpoints", "route_study_2026-11-26")
STUDY = os.path.join(RECORDS, "..", "..", "studies", "2026-11-26-procedural-vs-painted.md")


def test_the_route_table_reads_every_arm_from_its_records():
    rows = table(RECORDS).splitlines()[2:]
    assert len(rows) == 5
    mix = [r for r in rows if r.startswith("| procedural + painted")]
    # the mix names the lumbar crop's L3 (an identified vertebra shows its name and error, a miss an arrow)
    assert len(mix) == 2 and all("| L3 " in r for r in mix)
    with open(STUDY, encoding="utf-8") as f:
        study = f.read()
    assert all(r in study for r in rows), f"{os.path.basename(STUDY)} shows another table than the records give"
