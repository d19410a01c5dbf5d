"""The 26 vertebra labels the network predicts, their anatomical regions and id maps."""


#: Label names in cranio-caudal order; the index is the network's output channel.
VERTEBRA_NAMES: list[str] = (
    [f"C{i}" for i in range(1, 8)]
    + [f"T{i}" for i in range(1, 13)]
    + [f"L{i}" for i in range(1, 6)]
    + ["S1", "S2"]
)
NUM_VERTEBRAE: int = len(VERTEBRA_NAMES)  # 26
NAME_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(VERTEBRA_NAMES)}

REGIONS: dict[str, list[str]] = {
    "cervical": VERTEBRA_NAMES[0:7],
    "thoracic": VERTEBRA_NAMES[7:19],
    "lumbar": VERTEBRA_NAMES[19:24],
    "sacral": VERTEBRA_NAMES[24:26],
}

#: Display colour (RGB in 0..1) per region, used by the Slicer panel and the overview PNG.
REGION_COLORS: dict[str, tuple] = {
    "cervical": (0.95, 0.75, 0.20),
    "thoracic": (0.30, 0.70, 0.95),
    "lumbar": (0.40, 0.85, 0.40),
    "sacral": (0.90, 0.40, 0.70),
}

#: VerSe label ids (1 = C1 ... 24 = L5, 25 = L6, 26 = sacrum, 28 = T13). S1 is not a VerSe id;
#: we write the sacrum (26) for S1 and leave S2 out, which is what VerSe readers expect.
VERSE_ID: dict[str, int] = {name: i + 1 for i, name in enumerate(VERTEBRA_NAMES[:24])}
VERSE_ID["S1"] = 26

#: Typical centre-to-centre distance (mm) from this vertebra to the next one below it,
#: adult averages (body height + disc height). Used to judge plausible spacing only.
TYPICAL_SPACING_MM: list[float] = (
    [16.0, 18.0, 15.0, 15.0, 15.0, 16.0, 17.0]  # C1..C7 -> next
    + [19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 31.0]  # T1..T12
    + [33.0, 34.0, 35.0, 35.0, 32.0]  # L1..L5
    + [22.0, 0.0]  # S1 -> S2, S2 is last
)


def expected_distance_mm(upper: int, lower: int) -> float:
    """Typical centre-to-centre distance (mm) from label ``upper`` down to label ``lower``."""
    return float(sum(TYPICAL_SPACING_MM[upper:lower]))


def region_of(name: str) -> str:
    """Return the region ("cervical", "thoracic", "lumbar", "sacral") of a vertebra name."""
    for region, names in REGIONS.items():
        if name in names:
            return region
    raise KeyError(f"unknown vertebra name {name!r}")
