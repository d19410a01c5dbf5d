"""``generate_case``: one random synthetic spine CT with exact vertebral body centroids.

Order of work: draw the case parameters, build the spine (frames per vertebra), place the field of
view, paint soft tissue, discs and canal, bones, implants; render HU; pick an orientation.
Everything is drawn from one ``numpy.random.Generator`` seeded with ``seed``, so a seed always
gives the same case.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX

from .anatomy import EXTRA_LABELS, Spine, build_spine
from .appearance import render
from .body import paint_body
from .canvas import BONE_OTHER, BONE_PELVIS, BONE_RIB, BONE_SACRUM_LOW, BONE_SKULL, Canvas
from .implants import add_streaks, paint_implants
from .skeleton import paint_pelvis, paint_ribcage, paint_skull_and_shoulders
from .variants import paint_variant_bones, plan_variant, variant_meta
from .vertebra_shapes import paint_soft_parts, paint_vertebra


@dataclass
class SyntheticCase:
    """A generated CT with its ground truth.

    ``centroids`` holds LPS mm vertebral body centres of the (network-channel) vertebrae whose
    centre lies inside the image; ``labels`` is a label map on the image grid (0 background,
    1..26 = vertebra index + 1, 27 = L6 and 28 = T13 for transitional extras that have no channel).
    """

    image: sitk.Image
    centroids: dict[str, np.ndarray]
    labels: Optional[sitk.Image] = None
    meta: dict = field(default_factory=dict)


_SLICE_CHOICES = np.array([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0])
_SLICE_WEIGHTS = np.array([0.08, 0.07, 0.1, 0.15, 0.15, 0.2, 0.1, 0.15])
_ORIENTATIONS = {  # name: (permutation of x y z, flips) applied to an LPS-aligned grid
    "LPS": ((0, 1, 2), (False, False, False)),
    "RAS": ((0, 1, 2), (True, True, False)),
    "LAS": ((0, 1, 2), (False, True, False)),
    "RPI": ((0, 1, 2), (True, False, True)),
}


def generate_case(seed: int, *, full_spine_prob: float = 0.1, spacing: Optional[Sequence[float]] = None,
                  transitional_prob: float = 0.04, eleven_ribs_prob: float = 0.03, metal_prob: float = 0.08,
                  compression_prob: float = 0.03, scoliosis_prob: float = 0.2,
                  random_appearance_prob: float = 0.2, contrast_prob: float = 0.3, arterial_prob: float = 0.35,
                  reorient_prob: float = 0.5, min_vertebrae: int = 2, max_voxels: float = 6e6,
                  with_labels: bool = True, dtype=np.int16, sacrum: Optional[dict] = None,
                  cortical_mm: tuple[float, float] = (0.5, 1.1), arch_dense: float = 0.3,
                  rib_dense: float = 0.45, thoracic_depth: float = 1.0, variant: Optional[str] = None,
                  lumbar_rib_prob: float = 0.025, cervical_rib_prob: float = 0.01,
                  sacralised_l5_prob: float = 0.025) -> SyntheticCase:
    """Generate one synthetic spine CT.

    Args:
        seed: seed of the case; the same seed gives an identical case.
        full_spine_prob: probability that the field of view covers C1 to S2.
        spacing: output (x, y, z) spacing in mm; default random (0.7-1.0 mm in-plane, 1-5 mm slices),
            coarsened when the grid would exceed ``max_voxels``. Pass (2, 2, 2) for fast training data.
        transitional_prob: probability of a transitional spine (L6 or T13, half each).
        eleven_ribs_prob: probability that T12 carries no ribs (11 rib pairs, names unchanged).
        variant: force one transitional anatomy (see :mod:`training.synthetic.variants`): ``"none"``,
            ``"11_ribs"``, ``"13_ribs"`` (a lumbar rib pair on L1), ``"cervical_rib"`` (on C7; add ``_left``,
            ``_right`` or ``_both`` to fix the side), ``"6_lumbar"`` (an extra L6), ``"sacralised_l5"``
            (also ``_left`` / ``_right`` / ``_both``; alias ``"4_lumbar"``) or ``"13_thoracic"`` (an extra T13).
            None (default): drawn at random with the probabilities here. The truth is in ``meta``:
            ``variant``, ``rib_pairs``, ``rib_bearing``, ``lumbar_rib``, ``cervical_rib``, ``lumbar_count``,
            ``sacralised_l5``, ``extra_lumbar_centroid_lps``, ``extra_thoracic_centroid_lps``.
        lumbar_rib_prob, cervical_rib_prob, sacralised_l5_prob: probabilities of the newer variants, drawn
            from a separate stream and only in cases without an older one (L6, T13, 11 ribs), so cases
            without a variant are the same as before these existed.
        metal_prob: probability of pedicle screws and rods with streak artefacts.
        compression_prob: per-vertebra probability (thoracic/lumbar) of a wedge compression.
        scoliosis_prob: probability of a marked scoliosis.
        random_appearance_prob: probability of SynthSeg-style random tissue intensities.
        contrast_prob: probability of an intravenous-contrast look (of the non-random cases).
        arterial_prob: probability that a contrast case is an arterial-phase CT angiogram: blood at
            300-700 HU, brighter than the vertebral bodies (a real chest CTA showed 400-900 HU in the aorta).
            Drawn from a child stream, so the other draws of a seed do not change.
        reorient_prob: probability that the image direction is not LPS (RAS, LAS, a sagittal or a
            coronal acquisition grid...).
        min_vertebrae: at least this many labelled centroids lie in the field of view.
        max_voxels: voxel budget that bounds generation time.
        with_labels: also return the label map.
        dtype: ``np.int16`` (CT-like) or ``np.float32``.
        sacrum: fixes some draws of the sacrum's shape (keys of :func:`anatomy.sacral_angles`'
            ``fixed`` and ``s1_wedge``), for tests and diagnostics.
        cortical_mm: range of the cortical shell thickness (mm), one draw per patient.
        arch_dense: fraction of the posterior elements' inside painted as cortical bone (0: a shell around
            cancellous bone, as real laminae and spinous processes look on CT; 1: solid cortex).
        rib_dense: the same for the ribs.
        thoracic_depth: scale of the thoracic bodies' front-to-back depth (the real plain chest CT's are
            24-38 mm deep at mid-height against the table's 18-31 mm, while its level steps are 0.92x).
        The last four are the knobs of the comparison with a real plain chest CT (thin bright
        shells around darker bone where the generated ones are solid; deeper thoracic bodies); their
        defaults are the generator the bundled model was trained on.
    """
    rng = np.random.default_rng(seed)
    meta: dict = {"seed": int(seed)}

    transitional = None
    if rng.random() < transitional_prob:
        transitional = "L6" if rng.random() < 0.5 else "T13"
    eleven = bool(rng.random() < eleven_ribs_prob)
    plan = plan_variant(seed, transitional, eleven, variant, lumbar_rib_prob, cervical_rib_prob,
                        sacralised_l5_prob)
    transitional, eleven = plan.transitional, plan.eleven_ribs
    size = float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.18))
    roll = float(rng.normal(0, 4))
    spine = build_spine(rng, size, transitional, eleven, compression_prob, scoliosis_prob, roll, sacrum=sacrum,
                        thoracic_depth=thoracic_depth, l5_disc_scale=plan.l5_disc_scale)
    # scanner coordinates: put L1 somewhere plausible for a patient on the table
    shift = np.array([rng.normal(0, 15), rng.uniform(20, 110), rng.uniform(-700, 300)]) \
        - spine.by_name("L1").frame.origin
    for lv in spine.levels:
        lv.frame.origin = lv.frame.origin + shift
    meta.update(spine.meta, transitional=transitional, eleven_ribs=eleven, size=size)
    meta.update(variant_meta(spine, plan))
    meta["compressed"] = [lv.name for lv in spine.levels if lv.compression < 1]

    cv = _make_canvas(rng, spine, full_spine_prob, spacing, min_vertebrae, max_voxels, meta)

    body_meta = paint_body(cv, spine, rng, roll)
    meta.update(body_meta)
    paint_soft_parts(cv, spine)

    # bone densities: one patient-level value, vertebrae vary a little, compressed ones are denser
    base = float(np.clip(rng.normal(165, 55), 60, 350))
    cortical_hu = float(np.clip(rng.normal(800, 180), 400, 1400))
    bone_hu = {BONE_RIB: base * 1.1, BONE_PELVIS: base * 0.9, BONE_SACRUM_LOW: base * 0.95,
               BONE_OTHER: base, BONE_SKULL: base * 1.5}
    shell_mm = rng.uniform(*cortical_mm)
    for lv in spine.levels:
        bid = lv.label if lv.label else BONE_SACRUM_LOW
        bone_hu[bid] = base * rng.uniform(0.92, 1.08) * (1.4 if lv.compression < 1 else 1.0)
        paint_vertebra(cv, lv, bid, shell_mm, arch_dense=arch_dense)
    paint_ribcage(cv, spine, rng, shell_mm, rib_dense=rib_dense)
    paint_pelvis(cv, spine, rng, shell_mm)
    paint_skull_and_shoulders(cv, spine, rng, shell_mm)
    metal = bool(rng.random() < metal_prob)
    if metal:
        meta["implants"] = paint_implants(cv, spine, rng)
    # a lumbar / cervical rib, a sacralised L5's wings: an overlay from the variant stream, so the main
    # stream draws what it would draw without them
    overlay = paint_variant_bones(cv, spine, plan, shell_mm, rib_dense=rib_dense)

    r = rng.random()
    mode = "random" if r < random_appearance_prob else (
        "contrast" if r < random_appearance_prob + contrast_prob * (1 - random_appearance_prob) else "ct")
    noise_sd = float(rng.uniform(3, 25))
    psf = (rng.uniform(0.35, 0.9), rng.uniform(0.35, 0.9), 0.0)
    psf = (psf[0], psf[0], cv.spacing[2] * rng.uniform(0.3, 0.5))
    # the phase comes from a child stream: adding it left every other draw of a seed as it was
    phase_rng = rng.spawn(1)[0]
    arterial = mode == "contrast" and bool(phase_rng.random() < arterial_prob)
    blood_hu = float(phase_rng.uniform(300, 700)) if arterial else None
    hu = render(cv, rng, mode, bone_hu, cortical_hu, noise_sd, psf, blood_hu=blood_hu, overlay=overlay)
    if metal:
        add_streaks(hu, cv, rng)
    meta.update(appearance=mode, arterial=arterial, noise_sd=noise_sd, psf_mm=[float(p) for p in psf],
                bone_hu=base, cortical_hu=cortical_hu, cortical_mm=float(shell_mm))
    _reconstruction_circle(hu, cv, rng, meta)
    np.clip(hu, -3024, 3071, out=hu)

    orient = "LPS"
    if rng.random() < reorient_prob:
        orient = str(rng.choice(["RAS", "LAS", "RPI", "sagittal", "coronal"]))
    perm, flips = _orientation(orient, rng)
    img = _to_image(hu.astype(dtype, copy=False), cv, perm, flips)
    lab = _to_image(cv.labels, cv, perm, flips) if with_labels else None
    meta["orientation"] = orient

    centroids: dict[str, np.ndarray] = {}
    extras: dict[str, list] = {}
    cut = []
    for lv in spine.levels:
        inside = cv.contains(lv.frame.origin)
        if inside and lv.name in NAME_TO_INDEX:
            centroids[lv.name] = lv.frame.origin.copy()
        elif inside and lv.name in EXTRA_LABELS:
            extras[lv.name] = lv.frame.origin.tolist()
        if inside and not cv.contains(lv.frame.origin, margin=max(lv.H, 10) / 2):
            cut.append(lv.name)
    meta["extra_centroids"] = extras
    meta["near_border"] = cut
    meta["all_centroids"] = {lv.name: lv.frame.origin.tolist() for lv in spine.levels}

    meta["spacing"] = [float(s) for s in img.GetSpacing()]
    meta["size"] = list(img.GetSize())
    return SyntheticCase(img, centroids, lab, meta)


def _make_canvas(rng, spine: Spine, full_spine_prob: float, spacing, min_vertebrae: int,
                 max_voxels: float, meta: dict) -> Canvas:
    """Choose the field of view (z range by scan type, in-plane box) and the voxel grid."""
    named = [lv for lv in spine.levels if lv.name in NAME_TO_INDEX]
    zc = {lv.name: lv.frame.origin[2] for lv in spine.levels}
    z_top = zc["C1"] + 60
    z_bot = zc["S2"] - 140
    r = rng.random()
    if r < full_spine_prob:
        kind = "full"
        z1 = zc["C1"] + rng.uniform(10, 60)
        z0 = zc["S2"] - rng.uniform(15, 120)
    else:
        kind = str(rng.choice(["abdomen", "thorax", "neck", "lumbar", "random"],
                              p=[0.3, 0.15, 0.15, 0.15, 0.25]))
        if kind == "abdomen":
            z1 = zc[str(rng.choice(["T8", "T9", "T10", "T11", "T12"]))] + rng.uniform(-20, 40)
            z0 = zc["S2"] - rng.uniform(-20, 140)
        elif kind == "thorax":
            z1 = zc[str(rng.choice(["C4", "C5", "C6", "C7", "T1"]))] + rng.uniform(-10, 20)
            z0 = zc[str(rng.choice(["T11", "T12", "L1", "L2"]))] - rng.uniform(-10, 30)
        elif kind == "neck":
            z1 = zc["C1"] + rng.uniform(-5, 60)
            z0 = zc[str(rng.choice(["C6", "C7", "T1", "T2", "T3", "T4"]))] - rng.uniform(-5, 20)
        elif kind == "lumbar":
            z1 = zc[str(rng.choice(["T10", "T11", "T12", "L1"]))] + rng.uniform(-15, 15)
            z0 = zc[str(rng.choice(["L5", "S1", "S2"]))] - rng.uniform(-10, 40)
        else:
            length = rng.uniform(50, 450)
            zmid = rng.uniform(z_bot + 60, z_top - 30)
            z1, z0 = zmid + length / 2, zmid - length / 2
    z0, z1 = max(z0, z_bot), min(z1, z_top)
    # guarantee a few labelled centroids: grow the range around the nearest ones
    zs_named = np.array([zc[lv.name] for lv in named])
    inside = (zs_named >= z0 + 1) & (zs_named <= z1 - 1)
    if inside.sum() < min_vertebrae:
        mid = 0.5 * (z0 + z1)
        near = np.argsort(np.abs(zs_named - mid))[:min_vertebrae]
        z0 = min(z0, zs_named[near].min() - 5)
        z1 = max(z1, zs_named[near].max() + 5)
    meta["fov_kind"] = kind

    # in-plane: a body-sized field, or a spine-targeted small one
    sel = [lv for lv in spine.levels if z0 - 30 <= lv.frame.origin[2] <= z1 + 30] or named
    sx = np.array([lv.frame.origin[0] for lv in sel])
    sy = np.array([lv.frame.origin[1] for lv in sel])
    if rng.random() < 0.25:
        wx, wy = rng.uniform(150, 260), rng.uniform(150, 240)
        cx = sx.mean() + rng.normal(0, 10)
        cy = sy.mean() + rng.uniform(0, 40)
    else:
        wx, wy = rng.uniform(260, 400), rng.uniform(230, 330)
        cx = sx.mean() + rng.normal(0, 15)
        cy = sy.mean() - rng.uniform(40, 90)
    # keep the whole vertebra (body to spinous tip) inside the in-plane field
    x_lo = min(cx - wx / 2, sx.min() - 60)
    x_hi = max(cx + wx / 2, sx.max() + 60)
    y_lo = min(cy - wy / 2, sy.min() - 35)
    y_hi = max(cy + wy / 2, sy.max() + 90)

    if spacing is None:
        inplane = rng.uniform(0.7, 1.0)
        sz = float(rng.choice(_SLICE_CHOICES, p=_SLICE_WEIGHTS))
        sp = np.array([inplane, inplane, sz])
        n = np.prod(np.array([x_hi - x_lo, y_hi - y_lo, z1 - z0]) / sp)
        if n > max_voxels:  # coarsen in-plane first (up to 1.5 mm), then the slices
            f = float(np.sqrt(n / max_voxels))
            sp[:2] = min(sp[0] * f, 1.5)
            n = np.prod(np.array([x_hi - x_lo, y_hi - y_lo, z1 - z0]) / sp)
            if n > max_voxels:  # then thicker slices (clinical maximum 5 mm), then in-plane again
                sp[2] = min(max(sp[2] * n / max_voxels, sp[2]), 5.0)
                n = np.prod(np.array([x_hi - x_lo, y_hi - y_lo, z1 - z0]) / sp)
                if n > max_voxels:
                    sp[:2] = min(sp[0] * np.sqrt(n / max_voxels), 2.0)
    else:
        sp = np.asarray(spacing, float)
    shape = (int((z1 - z0) / sp[2]) + 1, int((y_hi - y_lo) / sp[1]) + 1, int((x_hi - x_lo) / sp[0]) + 1)
    meta["fov_mm"] = [float(x_hi - x_lo), float(y_hi - y_lo), float(z1 - z0)]
    return Canvas(np.array([x_lo, y_lo, z0]), sp, shape)


def _reconstruction_circle(hu: np.ndarray, cv: Canvas, rng, meta: dict) -> None:
    """Some scanners write -2048 / -3024 outside the circular reconstruction field."""
    if rng.random() > 0.2:
        return
    nz, ny, nx = hu.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = min(nx, ny) / 2 * rng.uniform(1.0, 1.2)
    out = (yy - ny / 2) ** 2 + (xx - nx / 2) ** 2 > r * r
    hu[:, out] = float(rng.choice([-2048.0, -3024.0]))
    meta["padding"] = True


def _orientation(orient: str, rng):
    """Axis permutation (new axis j <- LPS axis perm[j], x y z order) and flips of a named grid."""
    if orient in _ORIENTATIONS:
        return _ORIENTATIONS[orient]
    if orient == "sagittal":  # slices along x, e.g. PIR / ASL
        return (1, 2, 0), tuple(bool(f) for f in rng.integers(0, 2, 3))
    return (0, 2, 1), tuple(bool(f) for f in rng.integers(0, 2, 3))  # coronal


def _to_image(arr: np.ndarray, cv: Canvas, perm, flips) -> sitk.Image:
    """Image of an LPS-aligned (z, y, x) array re-gridded by an axis permutation and flips.

    No resampling: every voxel keeps its LPS position, only the index order changes, and the
    direction matrix and origin are set to match.
    """
    n_xyz = np.array(arr.shape[::-1])
    # numpy axes are (z, y, x) = LPS axes (2, 1, 0); new numpy axis order is reversed new xyz
    new_np_axes = [2 - perm[j] for j in (2, 1, 0)]
    a = np.transpose(arr, new_np_axes)
    for j, f in enumerate(flips):  # flip new axis j (xyz order) -> numpy axis 2 - j
        if f:
            a = np.flip(a, axis=2 - j)
    a = np.ascontiguousarray(a)
    direction = np.zeros((3, 3))
    origin = cv.origin.copy()
    spacing = []
    for j in range(3):
        old = perm[j]
        sign = -1.0 if flips[j] else 1.0
        direction[old, j] = sign
        spacing.append(float(cv.spacing[old]))
        if flips[j]:
            origin[old] += cv.spacing[old] * (n_xyz[old] - 1)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing(spacing)
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction.ravel()))
    return img
