"""The table of ``training/studies/2026-11-26-procedural-vs-painted.md`` from the evaluation records of each arm.

Each arm folder holds the ``training.evaluate`` outputs that ``benchmarks.variant_sweep`` wrote for it
(``eval_lumbar_crop``, ``eval_plain_chest``, ``eval_chest_CTA``, ``eval_abdomen_TS``, ``eval_synthetic``)::

    PYTHONPATH=. python -m benchmarks.route_study_table training/checkpoints/route_study_2026-11-26
"""

import argparse
import csv
import json
import os

#: (folder, arm, seed) in the order of the table
ARMS = (("start", "bundled weights (the start)", "–"),
        ("procedural_seed8", "procedural only", "8"),
        ("procedural_seed9", "procedural only", "9"),
        ("mix_seed8", "procedural + painted, in turn", "8"),
        ("mix_seed9", "procedural + painted, in turn", "9"))


def _vertebrae(folder: str) -> dict:
    with open(os.path.join(folder, "vertebrae.csv")) as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def _overall(folder: str) -> dict:
    with open(os.path.join(folder, "summary.json")) as f:
        return json.load(f)["all"]


def _one(rows: dict, name: str) -> str:
    """'L3 2.6' when named right (error in mm), else '→ T11 11.2': the nearest prediction's name and distance."""
    row = rows[name]
    if row["identified"] == "True":
        return f"{name} {float(row['error_mm']):.1f}"
    return f"→ {row['closest_name']} {float(row['closest_distance_mm']):.1f}"


def table(root: str) -> str:
    lines = ["| arm | seed | lumbar crop L3 (mm) | plain chest: right of 14 (mean mm) | plain chest T12 / L1 | "
             "chest CTA T12 | abdomen, the painted CT itself | 24 synthetic val: id (mean mm) |",
             "|---|---|---|---|---|---|---|---|"]
    for sub, arm, seed in ARMS:
        base = os.path.join(root, sub)
        if not os.path.isdir(base):
            continue
        crop, chest = _vertebrae(os.path.join(base, "eval_lumbar_crop")), _vertebrae(os.path.join(base, "eval_plain_chest"))
        cta = _vertebrae(os.path.join(base, "eval_chest_CTA"))
        pc, ab, sy = (_overall(os.path.join(base, e)) for e in ("eval_plain_chest", "eval_abdomen_TS", "eval_synthetic"))
        lines.append(f"| {arm} | {seed} | {_one(crop, 'L3')} | {pc['n_identified']} ({pc['mean_error_mm']:.1f}) | "
                     f"{_one(chest, 'T12')} / {_one(chest, 'L1')} | {_one(cta, 'T12')} | "
                     f"{ab['n_identified']}/{ab['n_truth']}, {ab['mean_error_mm']:.1f} mm | "
                     f"{100 * sy['n_identified'] / sy['n_truth']:.1f} % ({sy['mean_error_mm']:.1f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="folder with one subfolder per arm (start, procedural_seedN, mix_seedN)")
    print(table(ap.parse_args(argv).root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
