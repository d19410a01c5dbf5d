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


def covered(case) -> tuple[int, int, float]:
    """(vertebrae covered, vertebrae, seconds of spine search) for one evaluation case."""
    volume = preprocessing.to_canonical(case.load_image())
    t0 = time.perf_counter()
    track = blocks.find_spine_track(volume.hu, volume.spacing)
    plan = blocks.plan_blocks(volume.shape, track)
    seconds = time.perf_counter() - t0
    n_in = 0
    for lps in case.centroids.values():
        kji = volume.lps_to_index(lps)
        n_in += any(aggregation.trusted_vote(b, kji, volume.shape) for b in plan)
    return n_in, len(case.centroids), seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed0", type=int, default=800000)
    ap.add_argument("--image-cache", help="folder keeping the generated CTs between runs")
    args = ap.parse_args(argv)
    cases = (cached_synthetic_cases(args.cases, args.seed0, args.image_cache) if args.image_cache
             else synthetic_cases(args.cases, args.seed0))
    total = seen = 0
    times, missed = [], []
    for n, case in enumerate(cases, 1):
        n_in, n_all, seconds = covered(case)
        seen, total = seen + n_in, total + n_all
        times.append(seconds)
        if n_in < n_all:
            missed.append(f"{case.case_id} ({n_all - n_in} of {n_all})")
        print(f"\rcase {n}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"vertebrae covered by the planned blocks: {seen} / {total} ({100.0 * seen / max(total, 1):.1f} %)")
    print(f"cases with a vertebra no block sees: {len(missed)} / {len(times)}: {', '.join(missed) or '-'}")
    print(f"spine search + plan: median {np.median(times):.2f} s, max {np.max(times):.2f} s per case")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
