"""Level-typical vertebra dimensions and the random spine curve that places them.

Dimensions are adult averages (mm) rounded from the classic morphometry tables (Panjabi et al.
1991/1992 for cervical, thoracic and lumbar bodies, pedicles and canals; Zhou et al. 2000 for
lumbar bodies; disc heights from radiographic series: about 4-5 mm cervical, 4-7 mm thoracic,
8-12 mm lumbar). They are scaled per case by a patient-size factor and jittered per level.
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .canvas import Frame

# name: (kind, H body height, W body width, D body depth, disc below, canal w, canal d,
#        pedicle width, spinous length, spinous angle (deg below horizontal), TP length, TP angle back)
_TABLE = {
    "C1": ("C1", 10, 0, 0, 0.0, 28, 30, 6, 10, 0, 14, 0),
    "C2": ("C2", 15, 17, 16, 4.5, 24, 16, 7, 24, 20, 10, 0),
    "C3": ("cervical", 12.5, 16, 16, 4.0, 24, 15, 5, 14, 25, 9, 0),
    "C4": ("cervical", 12.5, 17, 16, 4.0, 25, 15, 5, 15, 25, 9, 0),
    "C5": ("cervical", 12.5, 18, 16, 4.5, 25, 15, 5.5, 16, 25, 10, 0),
    "C6": ("cervical", 13.0, 20, 17, 4.5, 25, 15, 6, 20, 25, 10, 0),
    "C7": ("cervical", 14.0, 23, 17, 4.5, 24, 15, 6.5, 32, 25, 14, 10),
    "T1": ("thoracic", 15.5, 26, 18, 4.0, 21, 15, 7.5, 36, 35, 18, 25),
    "T2": ("thoracic", 16.5, 27, 20, 4.0, 18, 15, 7, 38, 45, 19, 30),
    "T3": ("thoracic", 17.0, 27, 22, 4.0, 17, 15, 6.5, 38, 55, 19, 30),
    "T4": ("thoracic", 17.5, 28, 23, 4.5, 16, 15, 6, 38, 60, 19, 30),
    "T5": ("thoracic", 18.0, 29, 25, 4.5, 16, 15, 6, 38, 60, 19, 30),
    "T6": ("thoracic", 18.5, 30, 26, 5.0, 16, 15, 6, 38, 60, 19, 30),
    "T7": ("thoracic", 19.0, 31, 27, 5.0, 16, 15, 6.5, 38, 60, 18, 30),
    "T8": ("thoracic", 19.5, 32, 28, 5.5, 16, 15, 7, 36, 55, 18, 30),
    "T9": ("thoracic", 20.5, 34, 29, 6.0, 16, 15, 7.5, 34, 50, 17, 30),
    "T10": ("thoracic", 21.0, 36, 29, 6.5, 17, 16, 8, 32, 40, 16, 30),
    "T11": ("thoracic", 22.0, 38, 30, 7.0, 18, 17, 9, 30, 30, 12, 30),
    "T12": ("thoracic", 23.0, 40, 31, 8.0, 20, 17, 9.5, 30, 15, 10, 20),
    "L1": ("lumbar", 25.0, 42, 32, 9.0, 22, 18, 9, 30, 5, 20, 10),
    "L2": ("lumbar", 26.0, 44, 33, 10.0, 22, 17, 9.5, 31, 5, 24, 10),
    "L3": ("lumbar", 26.5, 46, 34, 11.0, 23, 16, 11, 31, 5, 28, 10),
    "L4": ("lumbar", 26.5, 48, 35, 11.0, 23, 17, 13, 30, 5, 26, 10),
    "L5": ("lumbar", 26.0, 50, 35, 10.0, 24, 18, 16, 26, 5, 24, 15),
    "S1": ("sacral", 27.0, 48, 33, 1.5, 28, 14, 14, 14, 10, 0, 0),
    "S2": ("sacral", 20.0, 36, 26, 1.5, 24, 11, 10, 10, 10, 0, 0),
    "S3": ("sacral_low", 17.0, 28, 20, 1.5, 20, 9, 8, 8, 10, 0, 0),
    "S4": ("sacral_low", 14.0, 22, 16, 1.5, 16, 8, 6, 6, 10, 0, 0),
    "S5": ("sacral_low", 11.0, 16, 12, 0.0, 12, 6, 5, 4, 10, 0, 0),
}
# transitional extras: L6 resembles L5, T13 a rib-bearing T12
_TABLE["L6"] = ("lumbar", 25.5, 50, 35, 10.0, 24, 18, 15, 26, 5, 22, 15)
_TABLE["T13"] = ("thoracic", 24.0, 41, 32, 8.5, 21, 18, 9.5, 30, 10, 9, 15)

#: sagittal tangent angle anchors (deg; positive = the spine runs anteriorly while descending)
_THETA_ANCHORS = {"C1": 15, "C4": 0, "C7": -15, "T1": -18, "T6": 0, "T12": 18, "L2": 14, "L3": 0,
                  "L4": -12, "L5": -24, "S1": -45, "S2": -55, "S3": -65, "S4": -78, "S5": -90}

#: label value used in the label map for transitional extras (outside the 26 network channels)
EXTRA_LABELS = {"L6": 27, "T13": 28}


@dataclass
class Level:
    """One vertebra of a synthetic spine."""

    name: str
    kind: str
    H: float
    W: float
    D: float
    disc: float
    canal_w: float
    canal_d: float
    ped_w: float
    sp_len: float
    sp_angle: float
    tp_len: float
    tp_angle: float
    frame: Optional[Frame] = None
    compression: float = 1.0  # anterior height factor (< 1: wedge fracture)
    compression_post: float = 1.0
    ribs: bool = False
    label: int = 0  # label-map value (index + 1, or an extra label), 0 = unlabelled bone


@dataclass
class Spine:
    """All vertebrae of a case, top to bottom, with their frames."""

    levels: list[Level]
    transitional: Optional[str]
    meta: dict = field(default_factory=dict)

    def by_name(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(lv.name == name for lv in self.levels)


def level_names(transitional: Optional[str]) -> list[str]:
    """Vertebra names top to bottom, including the unlabelled lower sacrum."""
    from VertebraeLabeling.VertebraeLabelingLib.vertebrae import VERTEBRA_NAMES

    names = list(VERTEBRA_NAMES)
    if transitional == "L6":
        names.insert(names.index("L5") + 1, "L6")
    elif transitional == "T13":
        names.insert(names.index("T12") + 1, "T13")
    return names + ["S3", "S4", "S5"]


def build_spine(rng: np.random.Generator, size: float, transitional: Optional[str],
                eleven_ribs: bool, compression_prob: float, scoliosis_prob: float,
                roll_deg: float, sacrum: Optional[dict] = None, thoracic_depth: float = 1.0,
                l5_disc_scale: float = 1.0) -> Spine:
    """Random spine: jittered level dimensions, sagittal/coronal curve and one frame per vertebra.

    The curve starts at the C1 centre, which is placed at the LPS origin; the caller shifts it.
    ``sacrum`` fixes some of :func:`sacral_angles`' draws (tests, diagnostics). The sacrum's own
    draws come from a child of ``rng``, so that changing the sacrum model
    leaves the other random draws of a seed as they were (a case still changes where its field of
    view is placed relative to S2). ``thoracic_depth`` scales the thoracic bodies' front-to-back depth
    (no random draw depends on it). ``l5_disc_scale`` scales the L5-S1 disc (a sacralised L5's narrow
    disc; no random draw depends on it either).
    """
    from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX

    srng = rng.spawn(1)[0]
    names = level_names(transitional)
    levels: list[Level] = []
    # a slowly varying per-level scale keeps neighbours alike while the spine as a whole varies
    drift = np.cumsum(rng.normal(0, 0.012, len(names)))
    drift -= drift.mean()
    for i, n in enumerate(names):
        row = _TABLE[n]
        s = size * (1.0 + drift[i])
        depth = row[3] * s * (thoracic_depth if row[0] == "thoracic" else 1.0)
        lv = Level(n, row[0], row[1] * s * rng.uniform(0.96, 1.04), row[2] * s, depth,
                   row[4] * s * rng.uniform(0.75, 1.2), row[5] * s, row[6] * s, row[7] * s,
                   row[8] * s * rng.uniform(0.85, 1.15), row[9] + rng.normal(0, 5),
                   row[10] * s * rng.uniform(0.85, 1.15), row[11])
        if n in NAME_TO_INDEX:
            lv.label = NAME_TO_INDEX[n] + 1
        elif n in EXTRA_LABELS:
            lv.label = EXTRA_LABELS[n]
        lv.ribs = lv.kind == "thoracic" and not (eleven_ribs and n == "T12")
        if lv.kind in ("thoracic", "lumbar") and rng.random() < compression_prob:
            lv.compression = rng.uniform(0.45, 0.85)
            lv.compression_post = min(1.0, lv.compression + rng.uniform(0.0, 0.3))
        if n == "S1":  # a wedge: its anterior (promontory) height exceeds the posterior one
            lv.compression_post = float((sacrum or {}).get("s1_wedge", srng.uniform(0.7, 0.95)))
        levels.append(lv)

    # degenerate discs: some lower lumbar and cervical discs lose height
    for lv in levels:
        if lv.kind in ("lumbar", "cervical") and rng.random() < 0.15:
            lv.disc *= rng.uniform(0.3, 0.7)
    if l5_disc_scale != 1.0:
        for lv in levels:
            if lv.name == "L5":
                lv.disc *= l5_disc_scale

    # arc-length position of each body centre (C1 -> C2 is fixed by the dens, not by a disc)
    s_pos = [0.0]
    for a, b in zip(levels[:-1], levels[1:]):
        if a.kind == "C1":
            step = 17.0 * size
        else:
            step = a.H * 0.5 * _mean_comp(a) + a.disc + b.H * 0.5 * _mean_comp(b)
        s_pos.append(s_pos[-1] + step)
    s_pos = np.array(s_pos)

    # sagittal angle profile from jittered anchors; T13/L6 cases map anchors by name
    curv = rng.uniform(0.55, 1.3)
    pitch = rng.normal(0, 4)
    anchor_s, anchor_t = [], []
    for name, th in _THETA_ANCHORS.items():
        idx = names.index(name)
        anchor_s.append(s_pos[idx])
        anchor_t.append(th * curv + pitch + rng.normal(0, 4))
    anchor_t = np.array(anchor_t)
    sac = [i for i, n in enumerate(_THETA_ANCHORS) if n.startswith("S")]
    anchor_t[sac] = sacral_angles(srng, pitch, sacrum)
    s_fine = np.arange(0.0, s_pos[-1] + 1.0, 1.0)
    theta = np.deg2rad(np.interp(s_fine, anchor_s, anchor_t))

    # scoliosis: a lateral angle wave over the thoraco-lumbar spine
    if rng.random() < scoliosis_prob:
        amp = rng.uniform(6, 25)
    else:
        amp = rng.uniform(0, 3)
    wave = rng.uniform(250, 520) * size
    phase = rng.uniform(0, 2 * np.pi)
    phi = np.deg2rad(amp * np.sin(2 * np.pi * s_fine / wave + phase)
                     * np.clip((s_fine - 80) / 80, 0, 1))  # keep the neck fairly straight
    phi += np.deg2rad(rng.normal(0, 2))

    t = np.stack([np.sin(phi), -np.sin(theta), -np.cos(theta) * np.cos(phi)], axis=1)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    pts = np.concatenate([[np.zeros(3)], np.cumsum(t[1:], axis=0)])  # 1 mm steps

    roll = np.deg2rad(roll_deg)
    ant0 = np.array([np.sin(roll) * 1.0, -np.cos(roll), 0.0])
    for i, lv in enumerate(levels):
        k = int(round(s_pos[i]))
        k = min(k, len(pts) - 1)
        o = pts[k]
        up = -t[k]
        a = ant0 - (ant0 @ up) * up
        a /= np.linalg.norm(a)
        # axial rotation: scoliotic vertebrae rotate towards the convexity, plus jitter
        rho = -2.0 * phi[k] + np.deg2rad(rng.normal(0, 2.5))
        lat = np.cross(up, a)
        a = np.cos(rho) * a + np.sin(rho) * lat
        lat = np.cross(up, a)
        lv.frame = Frame(o.copy(), lat, a, up)
    meta = dict(curvature=float(curv), pitch_deg=float(pitch), scoliosis_deg=float(amp),
                roll_deg=float(roll_deg))
    return Spine(levels, transitional, meta)


def sacral_angles(rng: np.random.Generator, pitch: float, fixed: Optional[dict] = None) -> np.ndarray:
    """Sagittal tangent angles (deg) at S1..S5, the anchors of the sacrum's curve.

    S1's angle is minus the sacral slope, drawn as 42 ± 9 deg clipped to 22-68 (supine series report a
    mean about 40, SD about 9, range 20-65), turned with the whole body's pitch. S1 to S2 may bend further back (a horizontal S1-S2 as in the
    sample CT, Testing/Data/ts_example_ct.nii.gz), and below S2 the sacrum is kyphotic: its tip turns down and forward again.
    ``fixed`` may set ``slope``, ``bend`` (S1 to S2, deg, positive = steeper) and ``kyphosis`` (S2 to
    S5 in all, deg).
    """
    fixed = fixed or {}
    slope = float(np.clip(rng.normal(42, 9), 22, 68))
    bend = rng.uniform(-5, 35)
    kyph = rng.uniform(20, 80)
    split = rng.dirichlet((2.0, 3.0, 3.0))
    slope = float(fixed.get("slope", slope))
    bend = float(fixed.get("bend", bend))
    kyph = float(fixed.get("kyphosis", kyph))
    s1 = -slope + pitch
    s2 = s1 - bend
    s3 = s2 + kyph * split[0]
    s4 = s3 + kyph * split[1]
    s5 = s4 + kyph * split[2]
    return np.clip(np.array([s1, s2, s3, s4, s5]), -100.0, 40.0)


def _mean_comp(lv: Level) -> float:
    return 0.5 * (lv.compression + lv.compression_post)
