"""The SynthSeg route: training cases painted from real multi-label maps with random intensities.

The procedural generator (:mod:`training.synthetic`) builds vertebrae from parametric shapes. A real label
map (TotalSegmentator v2 or VerSe ids) holds true vertebra shapes, their neighbours and the organs around
them. Painting every label with a random intensity (Billot et al., SynthSeg) teaches shapes rather than one
HU table, and a random deformation makes one label map yield endless distinct cases. Which of the two
routes transfers better to real CTs was measured on 2026-11-26
(``training/studies/2026-11-26-procedural-vs-painted.md``): mixed in with procedural cases, paintings of one real lumbar map helped on real CTs of
other patients.

One case, everything drawn from one ``numpy.random.Generator`` seeded with ``seed``:

1. a random affine (rotation, anisotropic scale, translation) and a smooth elastic displacement take the
   label map onto an LPS-aligned grid at the requested spacing (nearest neighbour: labels stay labels);
2. the ground truth is read from the *deformed* map by the data sets' own reader
   (:func:`training.datasets.labelmap.label_centroids`), so it moves with the shapes; slivers of vertebrae
   that the source map's field of view cuts are left out;
3. a random cranio-caudal crop keeps the centres of at least ``min_vertebrae`` vertebrae that the source
   map shows whole;
4. every label, background and organs included, gets a random mean and a within-label noise: over the
   whole CT range in "random" cases (in half of them one mean for all bones), CT-like (cancellous bone
   150-450 HU with a brighter cortical rim, soft tissue, lung, air) in "ct" cases;
5. bias field (random cases, as in the generator) and Gaussian blur (partial volume): the procedural
   generator's own helpers, so each step has one implementation.

The background of a label map is everything unlabelled: air, fat, unlabelled muscle, discs. Given the CT
the map was made from, its unlabelled voxels above ``BODY_HU`` become one more label, the body, so the
painted images keep a body outline against air, as every real CT has.
"""

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib.vertebrae import VERTEBRA_NAMES

from .datasets import MAP_ALIASES, load_dataset, parse_spec, read_image  # one alias table: labelmap:'s
from .datasets.common import ImageGeometry
from .datasets.labelmap import ID_MAPS, VERSE_MASK, find_label_file, guess_id_map, label_centroids
from .prepared import PreparedCase, prepare_case
from .synthetic.appearance import bias_field, gaussian_blur

#: TotalSegmentator v2 ("total") bones: sacrum and vertebrae 25-50, humerus..hip 69-78, skull 91,
#: ribs 92-115, sternum 116. Costal cartilage (117) is not bone.
TS_BONES: frozenset[int] = frozenset([*range(25, 51), *range(69, 79), 91, *range(92, 117)])
TS_LUNGS: frozenset[int] = frozenset(range(10, 15))
TS_AIRWAY: frozenset[int] = frozenset({16})
#: Unlabelled CT voxels above this (HU) are the body (fat, muscle, discs), below it air and bowel gas.
BODY_HU = -500.0


@dataclass
class PaintedCase:
    """A painted CT with its ground truth.

    Attributes:
        image: float32 HU-like image on an LPS-aligned grid at the requested spacing.
        centroids: vertebra name -> LPS mm, read from the deformed label map (body centres by default).
            A vertebra cut by the random crop keeps the centre of the whole vertebra (known before the crop)
            and is kept only when that centre lies in the image, as in the procedural generator.
        partial: names of vertebrae cut by the image's edge (by the crop or, already, by the source map).
            Those cut by the source map have the centre of their visible part, as in ``labelmap:`` cases, and
            are left out when only a sliver shows (``min_cut_fraction``).
        labels: the deformed, cropped label map on the image grid (source ids; the body label removed).
        meta: what was drawn (appearance mode, transform, crop, ...) and the reader's notes. Image point p
            shows source point ``A @ (p + d - c) + c + t``: A ``affine_matrix``, c ``affine_centre``,
            t ``translation_mm`` and d the (small, smooth) elastic displacement at p.
    """

    image: sitk.Image
    centroids: dict[str, np.ndarray]
    partial: list[str]
    labels: sitk.Image
    meta: dict = field(default_factory=dict)


def paint_labelmap(labels: sitk.Image, seed: int, spacing: Sequence[float] = (2.0, 2.0, 2.0), *,
                   ct: Optional[sitk.Image] = None, id_map: str = "auto", centre: str = "body",
                   sacrum_as_s2: bool = False, ct_like_prob: float = 0.5, crop_prob: float = 0.7,
                   min_vertebrae: int = 3, max_rotation_deg: float = 10.0, max_elastic_mm: float = 4.0,
                   min_cut_fraction: float = 0.5) -> PaintedCase:
    """Paint one random CT-like case from a multi-label map; the same seed gives the same case.

    Args:
        labels: integer label map (TotalSegmentator v2 or VerSe ids), any grid and orientation.
        seed: seed of the case.
        spacing: output (x, y, z) spacing in mm; 2 mm is the network's working spacing.
        ct: the CT the map was made from (any grid); when given, its unlabelled voxels above ``BODY_HU``
            are painted as one more label, the body.
        id_map: "totalsegmentator", "verse" or "auto" (:func:`~training.datasets.labelmap.guess_id_map`).
        centre: "body" (vertebral body centre: VerSe's, CSI's and the generator's convention) or "mass".
        sacrum_as_s2: use TotalSegmentator's sacrum (S2-S5) as a rough S2, as ``labelmap:`` can.
        ct_like_prob: probability of CT-like intensities rather than SynthSeg-style random ones.
        crop_prob: probability of a random cranio-caudal crop of the field of view.
        min_vertebrae: the crop keeps the centres of at least this many vertebrae the source map shows whole
            (no crop when it shows no more than that).
        max_rotation_deg: largest rotation (about a random axis through the spine's centre).
        max_elastic_mm: largest standard deviation of the elastic displacement's control points.
        min_cut_fraction: a vertebra the source map already cuts is kept only when at least this fraction of
            its nearest whole neighbour's volume shows. A sliver's true centre lies outside the image, where
            the network should call it absent; the reader would give it a centre on the sliver (or, with no
            canal found, off it).

    Raises:
        ValueError: the map holds no vertebra label of its id map.
    """
    rng = np.random.default_rng(seed)
    source = sitk.GetArrayFromImage(labels)
    if not np.issubdtype(source.dtype, np.integer):
        source = np.rint(source).astype(np.int64)
    ids = np.unique(source)
    ids = ids[ids > 0]
    if id_map == "auto":
        id_map = guess_id_map(ids)
    table = ID_MAPS[id_map]
    vertebra_ids = [int(i) for i in ids if int(i) in table]
    if not vertebra_ids:
        raise ValueError(f"the label map holds no vertebra label of the {id_map} map")
    bone_ids = TS_BONES if id_map == "totalsegmentator" else frozenset(VERSE_MASK)
    meta: dict = {"seed": int(seed), "id_map": id_map}

    # One more label for the unlabelled body, above every id of the map.
    body_id = int(ids.max()) + 1 if ids.size else 1
    paint_map = source.astype(np.uint16 if body_id < 2 ** 16 else np.int64)
    if ct is not None:
        ct_hu = sitk.GetArrayFromImage(_on_grid(ct, labels))
        paint_map[(source == 0) & (ct_hu > BODY_HU)] = body_id
        del ct_hu
    geometry = ImageGeometry.of(labels)
    cut_in_source = {_name(table, int(i), sacrum_as_s2) for i in _edge_ids(source)}

    # 1. Random affine and elastic displacement onto an LPS-aligned grid covering the source's box.
    zz, yy, xx = np.nonzero(np.isin(source, vertebra_ids))
    spine_centre = geometry.index_to_lps([xx.mean(), yy.mean(), zz.mean()])
    del zz, yy, xx
    sp = np.asarray(spacing, dtype=float)
    corners = np.array([geometry.index_to_lps(c) for c in
                        itertools.product(*[(-0.5, n - 0.5) for n in geometry.size])])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    size = np.maximum(np.floor((hi - lo) / sp).astype(int), 1)
    origin = lo + sp / 2
    reference = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    reference.SetSpacing(tuple(float(s) for s in sp))
    reference.SetOrigin(tuple(float(o) for o in origin))
    affine, drawn = _random_affine(rng, spine_centre, max_rotation_deg)
    elastic, drawn_elastic = _random_elastic(rng, origin, sp, size, max_elastic_mm)
    meta.update(drawn, **drawn_elastic)
    src = sitk.GetImageFromArray(paint_map)
    src.CopyInformation(labels)
    # Resample maps each output point p to the source point affine(p + d(p)).
    moved = sitk.Resample(src, reference, sitk.CompositeTransform([affine, elastic]),
                          sitk.sitkNearestNeighbor, 0, src.GetPixelID())
    deformed = sitk.GetArrayFromImage(moved)
    del paint_map, src, moved

    # 2. Ground truth from the deformed map, before the crop, so that crop-cut vertebrae keep whole centres.
    notes: list[str] = []
    uncropped = _to_image(np.where(deformed == body_id, 0, deformed), origin, sp)
    centroids, partial = label_centroids(uncropped, id_map=id_map, sacrum_as_s2=sacrum_as_s2, notes=notes,
                                         centre=centre)
    cut_early = cut_in_source | set(partial)  # cut before our crop: only their visible part is known
    _drop_slivers(centroids, cut_early, np.bincount(deformed.ravel(), minlength=body_id + 1),
                  {_name(table, i, sacrum_as_s2): i for i in vertebra_ids}, min_cut_fraction, notes)
    if not centroids:
        raise ValueError("no vertebra left in the field of view after the deformation")

    # 3. Cranio-caudal crop around a run of at least min_vertebrae whole vertebrae (C1 first in ``centroids``).
    k0, k1 = 0, deformed.shape[0] - 1
    names = [n for n in centroids if n not in cut_early]
    if len(names) > min_vertebrae and rng.random() < crop_prob:
        count = int(rng.integers(min_vertebrae, len(names) + 1))
        first = int(rng.integers(0, len(names) - count + 1))
        z_top = centroids[names[first]][2] + rng.uniform(10.0, 60.0)
        z_bottom = centroids[names[first + count - 1]][2] - rng.uniform(10.0, 60.0)
        k0 = int(np.clip(np.floor((z_bottom - origin[2]) / sp[2]), 0, k1))
        k1 = int(np.clip(np.ceil((z_top - origin[2]) / sp[2]), k0, k1))
    deformed = deformed[k0:k1 + 1]
    origin = origin + np.array([0.0, 0.0, k0 * sp[2]])
    z_range = (origin[2], origin[2] + (deformed.shape[0] - 1) * sp[2])
    meta["crop_mm"] = [float(z) for z in z_range]
    centroids = {n: p for n, p in centroids.items() if z_range[0] <= p[2] <= z_range[1]}
    cut = {_name(table, int(i), sacrum_as_s2) for i in _edge_ids(deformed)} | cut_early
    partial = [n for n in centroids if n in cut]
    meta["cut_in_source"] = [n for n in centroids if n in cut_in_source]

    # 4.-5. Paint, noise, bias, blur.
    mode = "ct" if rng.random() < ct_like_prob else "random"
    hu = _paint(deformed, rng, mode, body_id, bone_ids, id_map, meta)
    if mode == "random":
        hu = bias_field(hu, SimpleNamespace(spacing=sp, origin=origin), rng)
    psf_mm = np.array([rng.uniform(0.4, 1.2), 0.0, rng.uniform(0.4, 2.0)])
    psf_mm[1] = psf_mm[0]
    hu = gaussian_blur(hu, psf_mm / sp)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    meta.update(appearance=mode, psf_mm=psf_mm.tolist(), notes=notes)

    image = _to_image(hu.astype(np.float32, copy=False), origin, sp)
    out_labels = _to_image(np.where(deformed == body_id, 0, deformed), origin, sp)
    return PaintedCase(image=image, centroids=centroids, partial=partial, labels=out_labels, meta=meta)


def _drop_slivers(centroids: dict[str, np.ndarray], cut: set, counts: np.ndarray, ids: dict[str, int],
                  min_fraction: float, notes: list[str]) -> None:
    """Remove from ``centroids`` the cut vertebrae smaller than ``min_fraction`` of their nearest whole one."""
    order = {n: k for k, n in enumerate(VERTEBRA_NAMES)}
    whole = [n for n in centroids if n not in cut]
    for name in [n for n in centroids if n in cut]:
        if not whole:
            return
        nearest = min(whole, key=lambda w: abs(order[w] - order[name]))
        fraction = counts[ids[name]] / max(int(counts[ids[nearest]]), 1)
        if fraction < min_fraction:
            del centroids[name]
            notes.append(f"{name}: cut by the field of view, {fraction:.0%} of {nearest}'s volume shows; left out")


def _paint(lab: np.ndarray, rng: np.random.Generator, mode: str, body_id: int, bone_ids: frozenset[int],
           id_map: str, meta: dict) -> np.ndarray:
    """HU of every voxel: a mean and a within-label noise per label, plus a cortical rim in CT-like cases."""
    present = np.unique(lab).tolist()
    mean = np.zeros(body_id + 1, np.float32)
    sd = np.zeros(body_id + 1, np.float32)
    is_bone = np.zeros(body_id + 1, bool)
    is_bone[[i for i in present if i in bone_ids]] = True
    lungs = TS_LUNGS if id_map == "totalsegmentator" else frozenset()
    airway = TS_AIRWAY if id_map == "totalsegmentator" else frozenset()
    bone_hu = float(rng.uniform(150.0, 450.0))  # one patient-level density, each bone a little off it
    # Half the random cases paint all bones alike, as in a real CT, where neighbouring vertebrae are told
    # apart by their shape and the discs between them, not by a contrast of their own.
    grouped = mode == "random" and bool(rng.random() < 0.5)
    shared_bone = float(rng.uniform(-1000.0, 1500.0))
    for i in present:
        if mode == "random" and grouped and is_bone[i]:
            mean[i], sd[i] = shared_bone + rng.normal(0.0, 40.0), rng.uniform(0.0, 120.0)
        elif mode == "random":
            mean[i], sd[i] = rng.uniform(-1000.0, 1500.0), rng.uniform(0.0, 120.0)
        elif i == 0:
            mean[i], sd[i] = rng.uniform(-1020.0, -950.0), rng.uniform(5.0, 30.0)
        elif i == body_id:
            mean[i], sd[i] = rng.uniform(-120.0, 30.0), rng.uniform(10.0, 40.0)
        elif is_bone[i]:
            mean[i], sd[i] = bone_hu * rng.uniform(0.9, 1.1), rng.uniform(20.0, 60.0)
        elif i in lungs:
            mean[i], sd[i] = rng.uniform(-920.0, -750.0), rng.uniform(20.0, 80.0)
        elif i in airway:
            mean[i], sd[i] = rng.uniform(-1000.0, -900.0), rng.uniform(5.0, 30.0)
        else:
            mean[i], sd[i] = rng.uniform(-50.0, 150.0), rng.uniform(5.0, 30.0)
    hu = rng.standard_normal(lab.shape, dtype=np.float32)
    hu *= sd[lab]
    hu += mean[lab]
    if mode == "ct":
        # Cortex: bone voxels with a 6-neighbour of another label, at the density a 2 mm voxel averages to.
        bone = is_bone[lab]
        rim = np.zeros_like(bone)
        for axis in range(3):
            n = lab.shape[axis]
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis], b[axis] = slice(0, n - 1), slice(1, n)
            differs = lab[tuple(a)] != lab[tuple(b)]
            rim[tuple(a)] |= differs
            rim[tuple(b)] |= differs
        rim &= bone
        cortical_hu = float(rng.uniform(500.0, 1100.0))
        hu[rim] = cortical_hu + rng.standard_normal(int(rim.sum()), dtype=np.float32) * 60.0
        meta.update(bone_hu=bone_hu, cortical_hu=cortical_hu)
    meta["bones_grouped"] = grouped
    return hu


def _random_affine(rng: np.random.Generator, centre: np.ndarray, max_rotation_deg: float
                   ) -> tuple[sitk.AffineTransform, dict]:
    """Rotation about a random axis, anisotropic scale 0.9-1.1 and a translation of up to 10 mm."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0.0, max_rotation_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)  # Rodrigues
    scale = rng.uniform(0.9, 1.1, 3)
    translation = rng.uniform(-10.0, 10.0, 3)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(float(v) for v in (rotation @ np.diag(scale)).ravel()))
    affine.SetCenter(tuple(float(c) for c in centre))
    affine.SetTranslation(tuple(float(t) for t in translation))
    return affine, {"rotation_deg": float(np.rad2deg(angle)), "scale": scale.tolist(),
                    "translation_mm": translation.tolist(), "affine_matrix": (rotation @ np.diag(scale)).tolist(),
                    "affine_centre": [float(c) for c in centre]}


def _random_elastic(rng: np.random.Generator, origin: np.ndarray, spacing: np.ndarray, size: np.ndarray,
                    max_sd_mm: float) -> tuple[sitk.Transform, dict]:
    """A smooth displacement: random control points every 40-80 mm, B-spline upsampled to a field.

    The field is sampled every ~8 mm and read by linear interpolation while resampling, which costs a
    tenth of evaluating a B-spline transform at every voxel and is as smooth at this scale.
    """
    sd = float(rng.uniform(0.0, max_sd_mm))
    step = float(rng.uniform(40.0, 80.0))
    extent = spacing * (size - 1)
    nodes = np.maximum(np.ceil(extent / step).astype(int) + 1, 4)  # B-spline interpolation needs 4
    coarse = sitk.GetImageFromArray(rng.normal(0.0, sd, (*nodes[::-1], 3)), isVector=True)
    coarse.SetSpacing(tuple(float(e / (n - 1)) for e, n in zip(extent, nodes)))
    coarse.SetOrigin(tuple(float(o) for o in origin))
    fine = np.maximum(np.ceil(extent / 8.0).astype(int) + 1, 2)
    grid = sitk.Image([int(n) for n in fine], sitk.sitkVectorFloat64, 3)
    grid.SetSpacing(tuple(float(e / (n - 1)) for e, n in zip(extent, fine)))
    grid.SetOrigin(tuple(float(o) for o in origin))
    upsampled = sitk.Resample(coarse, grid, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(upsampled), {"elastic_sd_mm": sd, "elastic_step_mm": step}


def _on_grid(image: sitk.Image, like: sitk.Image) -> sitk.Image:
    """``image`` on ``like``'s grid (itself when the grids already agree)."""
    same = (image.GetSize() == like.GetSize() and np.allclose(image.GetOrigin(), like.GetOrigin(), atol=1e-3)
            and np.allclose(image.GetSpacing(), like.GetSpacing(), atol=1e-4)
            and np.allclose(image.GetDirection(), like.GetDirection(), atol=1e-4))
    return image if same else sitk.Resample(image, like, sitk.Transform(), sitk.sitkLinear, -1000.0,
                                            sitk.sitkFloat32)


def _edge_ids(arr: np.ndarray) -> list[int]:
    """Label ids on the first or last voxel along any axis (the rule of ``label_centroids``' partial)."""
    faces = [arr[0], arr[-1], arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]]
    ids = np.unique(np.concatenate([f.ravel() for f in faces]))
    return [int(i) for i in ids if i > 0]


def _name(table: dict[int, str], label: int, sacrum_as_s2: bool) -> Optional[str]:
    name = table.get(label)
    return ("S2" if sacrum_as_s2 else None) if name == "sacrum" else name


def _to_image(arr: np.ndarray, origin: np.ndarray, spacing: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(arr)
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


class PaintedSource:
    """The label maps a ``painted:PATH[?options]`` spec names, painted afresh for every seed.

    ``PATH`` and the options are those of ``labelmap:`` (``seg``, ``map``, ``sacrum_as_s2``, ``centre``;
    ``centre`` defaults to ``body`` here, the convention the network is trained on). Calling the source
    with a seed gives a :class:`~training.prepared.PreparedCase`, like ``synthetic_case``.
    """

    def __init__(self, spec: str, spacing: Sequence[float] = (2.0, 2.0, 2.0)) -> None:
        kind, sep, rest = spec.partition(":")
        if kind.strip().lower() != "painted" or not sep:
            raise ValueError(f"a painted data spec looks like painted:DIR, not {spec!r}")
        labelmap_spec = "labelmap:" + rest
        _, path, options = parse_spec(labelmap_spec)
        cases = load_dataset(labelmap_spec)  # checks the options and finds the cases as labelmap: does
        if not cases:
            raise ValueError(f"no label-map case found in {path}")
        self.spacing = tuple(spacing)
        self.id_map = MAP_ALIASES[options.get("map", "auto").lower()]
        self.centre = options.get("centre", "body")
        self.sacrum_as_s2 = options.get("sacrum_as_s2", "0").strip().lower() in ("1", "true", "yes", "on")
        self.maps: list[tuple[str, str, str]] = []  # (case id, label map, CT)
        for case in cases:
            label_path = path if os.path.isfile(path) else find_label_file(os.path.dirname(case.image_path),
                                                                        options.get("seg"))
            self.maps.append((case.case_id, label_path, case.image_path))
        self._loaded: Optional[tuple[int, sitk.Image, sitk.Image]] = None

    def paint(self, seed: int) -> PaintedCase:
        """Painted case ``seed`` of label map ``seed % len(maps)``."""
        index = seed % len(self.maps)
        if self._loaded is None or self._loaded[0] != index:  # one map in memory: a data set of one reads once
            _, label_path, image_path = self.maps[index]
            self._loaded = (index, read_image(label_path), read_image(image_path))
        _, labels, ct = self._loaded
        return paint_labelmap(labels, seed, self.spacing, ct=ct, id_map=self.id_map, centre=self.centre,
                              sacrum_as_s2=self.sacrum_as_s2)

    def __call__(self, seed: int) -> PreparedCase:
        case_id = f"painted-{self.maps[seed % len(self.maps)][0]}-{seed}"
        case = self.paint(seed)
        prepared = prepare_case(case.image, case.centroids, case_id=case_id)
        if not np.isfinite(prepared.volume).all() or not prepared.present.any():
            raise ValueError(f"{case_id} is unusable")
        return prepared
