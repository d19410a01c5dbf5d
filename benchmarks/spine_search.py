"""How often the spine search puts blocks where the vertebrae are (no network involved).

A vertebra the planned blocks cannot see (its centre is not where a block's votes are trusted, see
``aggregation.trusted_vote``) is lost whatever the network does, so this bounds the identification
rate from above. Prints the share of vertebrae covered, the cases with a miss, and the search time::

    python -m benchmarks.spine_search --cases 200 --seed0 800000 --image-cache /tmp/val_ct
"""

import argparse
import sys
import time

import numpy as np

from training.evaluate import synthetic_cases
from VertebraeLabeling.VertebraeLabelingLib import aggregation, blocks, preprocessing

from .aggregation_study import cached_synthetic_cases


def covered(case) -> tuple[int, int, float, list[float]]:
    """(vertebrae covered, vertebrae, seconds of spine search, front-to-back offsets) for one case.

    The offsets (mm) are those of each covered vertebra's centre from the middle of the block that
    has it nearest its middle: a block centred on the aorta in front of the spine still covers the
    vertebral bodies, near its back face, but cuts their arches off."""
    volume = preprocessing.to_canonical(case.load_image())
    t0 = time.perf_counter()
    track = blocks.find_spine_track(volume.hu, volume.spacing)
    plan = blocks.plan_blocks(volume.shape, track)
    seconds = time.perf_counter() - t0
    n_in = 0
    offsets = []
    for lps in case.centroids.values():
        kji = volume.lps_to_index(lps)
        seen_by = [b for b in plan if aggregation.trusted_vote(b, kji, volume.shape)]
        n_in += bool(seen_by)
        if seen_by:
            offsets.append(min(abs(kji[1] - (b.start[1] + b.shape[1] / 2)) for b in seen_by) * volume.spacing)
    return n_in, len(case.centroids), seconds, offsets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed0", type=int, default=800000)
    ap.add_argument("--image-cache", help="folder keeping the generated CTs between runs")
    ap.add_argument("--depth-ramp", type=float, nargs=2, metavar=("START", "WIDTH"),
                    help="override blocks.DEPTH_RAMP (front-to-back weight of the spine search)")
    args = ap.parse_args(argv)
    if args.depth_ramp:
        blocks.DEPTH_RAMP = tuple(args.depth_ramp)
    cases = (cached_synthetic_cases(args.cases, args.seed0, args.image_cache) if args.image_cache
             else synthetic_cases(args.cases, args.seed0))
    total = seen = 0
    times, missed, offsets = [], [], []
    for n, case in enumerate(cases, 1):
        n_in, n_all, seconds, off = covered(case)
        offsets += off
        seen, total = seen + n_in, total + n_all
        times.append(seconds)
        if n_in < n_all:
            missed.append(f"{case.case_id} ({n_all - n_in} of {n_all})")
        print(f"\rcase {n}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"vertebrae covered by the planned blocks: {seen} / {total} ({100.0 * seen / max(total, 1):.1f} %)")
    print(f"cases with a vertebra no block sees: {len(missed)} / {len(times)}: {', '.join(missed) or '-'}")
    off = np.asarray(offsets)
    print(f"front-to-back offset of a covered vertebra from its best block's middle: median {np.median(off):.1f} mm, "
          f"95th percentile {np.percentile(off, 95):.1f} mm, over 40 mm: {int((off > 40).sum())}")
    print(f"spine search + plan: median {np.median(times):.2f} s, max {np.max(times):.2f} s per case")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
