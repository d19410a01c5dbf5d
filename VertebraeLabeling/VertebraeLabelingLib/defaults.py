"""Test-time defaults shared by the library, the command line and the Slicer panel.

Torch-free, so the panel and ``--help`` can show them without importing PyTorch.
"""

#: Cranio-caudal step between network blocks (2 mm voxels): each vertebra is seen by 3-4 blocks.
#: Half a block (52) is twice as fast, but a vertebra then gets only 1-2 votes to agree on. On 100
#: validation CTs: id rate 96.9 → 97.4 %, mean error 2.07 → 1.92 mm (with agreement-weighted
#: candidates), for about twice the network time (0.17 s a block on 2 CPU cores).
DEFAULT_STRIDE: int = 26

#: A block's vote for a vertebra counts only above this presence probability. 0.3 named 0.7 points
#: more vertebrae on validation CTs but also added labels for vertebrae that are not there.
DEFAULT_MIN_PROBABILITY: float = 0.5

#: Look at each block a second time, mirrored left-right, and count it as a vote of its own. On 100
#: validation CTs (stride 26): id rate 97.4 → 97.6 %, mean error 1.90 → 1.83 mm, for twice the network
#: time. (Averaging the two looks instead gave 1.77 mm but 97.2 %: where they disagree on the level,
#: the average lands between two vertebrae; as separate votes the agreement weighting sorts them out.)
DEFAULT_MIRROR: bool = True

#: A labeled point below this confidence is named in a "check these points" message. On 100 validation
#: CTs (seeds 800000+, bundled weights) 8 cases have such a point and all 8 have a misidentified vertebra;
#: with the "levels missing between labeled ones" message, 9 cases are flagged, all 9 wrong, holding 22 of
#: the 36 misidentified vertebrae (0.3 flagged 8 cases, 20 of the 36). The real chest CT angiogram the
#: bundled model mislabels has two points at 0.14.
LOW_CONFIDENCE: float = 0.4

#: Name the levels by counting the vertebral bodies from anatomical anchors (the first and last rib pairs,
#: the sacrum, C2) together with the network's probabilities, instead of the network's names alone
#: (``naming.py``; the measurement is in ``training/studies/``).
DEFAULT_ANCHORS: bool = True
