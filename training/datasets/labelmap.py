"""Ground truth from a multi-label segmentation: the centre of mass of each vertebra label.

Two id maps are built in (copied from the published tables, so nothing is read at run time):
TotalSegmentator v2 ("total" task) and VerSe. The centroid of a label is the mean of its voxel
centres in LPS mm, which is the centre of mass of the *whole* vertebra (body and posterior
elements); VerSe and CSI annotate the vertebral *body* centre instead, a few mm anterior.

Sacrum in TotalSegmentator v2: id 26 ``vertebrae_S1`` is the first sacral vertebra and maps to
our S1; id 25 ``sacrum`` is the rest of the sacrum (S2..S5 fused, with the alae), whose centre
of mass lies well below and behind the S2 body centre, so by default it is **not** used as S2
(dropped with a note). ``sacrum_as_s2=True`` uses it anyway, as a rough S2.
In VerSe masks, 26 (sacrum) maps to S1, as in the centroid files.
"""

import fnmatch
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .common import AnnotatedCase, ImageGeometry, keep_known, order_by_spine, read_image
from .verse import VERSE_ID_TO_NAME

#: TotalSegmentator v2 "total" task: label id -> vertebra name ("sacrum" handled apart).
TOTALSEGMENTATOR_V2: Dict[int, str] = {25: "sacrum", 26: "S1"}
TOTALSEGMENTATOR_V2.update({27 + i: f"L{5 - i}" for i in range(5)})     # 27 L5 .. 31 L1
TOTALSEGMENTATOR_V2.update({32 + i: f"T{12 - i}" for i in range(12)})   # 32 T12 .. 43 T1
TOTALSEGMENTATOR_V2.update({44 + i: f"C{7 - i}" for i in range(7)})     # 44 C7 .. 50 C1

#: VerSe mask ids -> name: the centroid files' table (26 sacrum -> S1; 25 L6, 27 coccyx, 28 T13 are dropped later).
VERSE_MASK: Dict[int, str] = VERSE_ID_TO_NAME

ID_MAPS: Dict[str, Dict[int, str]] = {"totalsegmentator": TOTALSEGMENTATOR_V2, "verse": VERSE_MASK}

_IMAGE_NAMES = ("ct.nii.gz", "ct.nii", "image.nii.gz", "image.nii", "ct.nrrd", "ct.mha")
_LABEL_HINTS = ("seg", "label", "msk", "mask")


def guess_id_map(label_ids: np.ndarray) -> str:
    """"totalsegmentator" when any id exceeds VerSe's largest (28), else "verse"."""
    return "totalsegmentator" if label_ids.size and int(label_ids.max()) > 28 else "verse"


def label_centroids(labels: sitk.Image, id_map: str = "auto", sacrum_as_s2: bool = False,
                    min_volume_mm3: float = 50.0, notes: Optional[List[str]] = None, centre: str = "mass",
                    ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Centre (LPS mm) of each vertebra label; returns (centroids, partial names).

    Args:
        labels: an integer label image (any geometry: positions come from its own header).
        id_map: "totalsegmentator", "verse" or "auto" (:func:`guess_id_map`).
        sacrum_as_s2: use TotalSegmentator's "sacrum" (S2..S5) centre of mass as S2.
        min_volume_mm3: labels smaller than this are taken for stray voxels and ignored.
        notes: receives one line per dropped label and the id map used.
        centre: "mass" (centre of mass of the whole vertebra) or "body" (:func:`body_centres`, the
            convention of VerSe, CSI and our generator). A label without a found canal gets its centre of
            mass plus the median body-minus-mass offset of the others (C1, or fewer than 2 others: its centre of mass).

    A vertebra is *partial* when its label touches the first or last voxel along any axis.
    """
    notes = notes if notes is not None else []
    geometry = ImageGeometry.of(labels)
    arr = sitk.GetArrayViewFromImage(labels)  # (z, y, x)
    present = np.unique(arr)
    present = present[present > 0]
    if id_map == "auto":
        id_map = guess_id_map(present)
    table = ID_MAPS[id_map]
    notes.append(f"label ids read with the {id_map} map")
    wanted = np.array(sorted(i for i in table if i in set(present.tolist())), dtype=np.int64)
    if wanted.size == 0:
        return {}, []
    mask = np.isin(arr, wanted)
    zz, yy, xx = np.nonzero(mask)
    values = np.asarray(arr[zz, yy, xx], dtype=np.int64)
    top = int(wanted.max()) + 1
    counts = np.bincount(values, minlength=top)
    # Sums per label of each index coordinate: the mean voxel index is the centre of mass.
    sums = [np.bincount(values, weights=c.astype(np.float64), minlength=top) for c in (xx, yy, zz)]
    size = geometry.size
    on_edge = ((xx == 0) | (xx == size[0] - 1) | (yy == 0) | (yy == size[1] - 1)
               | (zz == 0) | (zz == size[2] - 1))
    edge_counts = np.bincount(values, weights=on_edge.astype(np.float64), minlength=top)
    voxel_mm3 = float(np.prod(geometry.spacing))
    if centre not in ("mass", "body"):
        raise ValueError(f"centre must be 'mass' or 'body', not {centre!r}")
    bodies = body_centres(labels, wanted.tolist()) if centre == "body" else {}

    named: Dict[str, np.ndarray] = {}
    mass: Dict[str, np.ndarray] = {}
    with_body = set()
    partial: List[str] = []
    for label in wanted.tolist():
        name = table[label]
        if counts[label] * voxel_mm3 < min_volume_mm3:
            notes.append(f"label {label} ({name}): {counts[label]} voxels, ignored as stray")
            continue
        if name == "sacrum":
            if not sacrum_as_s2:
                notes.append(f"label {label} (TotalSegmentator sacrum, S2-S5): not used as S2")
                continue
            name = "S2"
            notes.append(f"label {label} (TotalSegmentator sacrum): centre of mass used as S2")
        index = np.array([s[label] for s in sums]) / counts[label]
        mass[name] = named[name] = geometry.index_to_lps(index)
        if label in bodies:
            named[name] = bodies[label]
            with_body.add(name)
        if edge_counts[label] > 0:
            partial.append(name)
    if centre == "body":
        # Where no canal closes (an open arch at a coarse slice spacing), shift the centre of mass by the
        # median body-minus-mass offset of the labels where one did; C1 has no body and keeps its own.
        offsets = [named[n] - mass[n] for n in with_body]
        for name in sorted(set(named) - with_body):
            if len(offsets) >= 2 and name != "C1":
                named[name] = mass[name] + np.median(offsets, axis=0)
                notes.append(f"{name}: no spinal canal found; centre of mass + median body offset of the others")
            else:
                notes.append(f"{name}: no spinal canal found; centre of mass kept")
    centroids = order_by_spine(keep_known(named, notes, "label map"))
    return centroids, [n for n in partial if n in centroids]


#: Holes smaller than this (mm², in one slice) are not the spinal canal. Adult canals are 100-300 mm²;
#: at 20 a 24 mm² hole inside an elastically deformed body (painted cases) was taken for the canal.
MIN_CANAL_AREA_MM2 = 60.0


def body_centres(labels: sitk.Image, label_ids: List[int], follow_canal: bool = True) -> Dict[int, np.ndarray]:
    """Vertebral *body* centre (LPS mm) of each label, estimated from its mask: what VerSe and CSI annotate.

    In each slice across the spine the spinal canal is the largest hole the vertebra's mask encloses;
    the body is the part of the mask anterior to the canal's front wall (slices whose arch is open use
    the median front wall of the others). Labels in which no canal is found (C1 has no body; a cut
    vertebra may show no closed arch) are left out; :func:`label_centroids` decides what they get.

    With ``follow_canal`` the slices need not be axial: the mask is also cut at the sagittal tilts of
    :data:`TILTS_DEG`, and the tilt along which the closed canal runs longest (by more than one
    slice over the axial cut) is used. A steep S1 (45 degrees) shows its canal in one or two axial
    slices only; one front wall then serves every slice and cuts the tilted body obliquely.
    """
    oriented = sitk.DICOMOrient(labels, "LPS")  # voxel axes run towards L, P, S: array (S, P, L)
    arr = sitk.GetArrayViewFromImage(oriented)
    out: Dict[int, np.ndarray] = {}
    for label in label_ids:
        zz, yy, xx = np.nonzero(arr == label)
        if zz.size == 0:
            continue
        lo = np.maximum(np.array([xx.min(), yy.min(), zz.min()]) - 2, 0)
        hi = np.minimum(np.array([xx.max(), yy.max(), zz.max()]) + 3, np.array(oriented.GetSize()))
        mask = sitk.Cast(sitk.RegionOfInterest(oriented, [int(v) for v in hi - lo], [int(v) for v in lo]) == label,
                         sitk.sitkFloat32)
        found = _body_centre_across(mask, None)
        if follow_canal:
            # slice across the canal: try sagittal tilts and keep the one along which the closed canal
            # runs longest; the axial cut stays unless a tilt beats it by more than one slice
            best_len = found[1] if found is not None else 0.0
            margin = float(max(mask.GetSpacing()))
            for tilt in TILTS_DEG:
                t = np.deg2rad(tilt)
                again = _body_centre_across(mask, np.array([0.0, np.sin(t), np.cos(t)]))
                if again is not None and again[1] > best_len + margin:
                    found, best_len, margin = again, again[1], 0.0
        if found is None:
            continue
        out[label] = found[0]
    return out


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # 2-D 4-connectivity, as ndimage's default in a slice

#: Sagittal tilts (deg; positive = the slices' normal leans posteriorly) tried for the canal's direction.
TILTS_DEG = tuple(t for t in range(-70, 75, 5) if t != 0)


def _body_centre_across(mask: sitk.Image, up: Optional[np.ndarray]):
    """Body centre (LPS mm) and length of closed canal (mm) of a 0/1 float LPS mask, sliced across ``up``.

    ``up`` None slices the mask's own axial grid; otherwise the mask is resampled (linear, at its
    finest spacing) onto a grid whose slices are perpendicular to ``up`` and whose rows run
    posteriorly, so that the same front-wall rule applies.
    """
    from scipy import ndimage

    if up is None:
        grid = mask
        arr = sitk.GetArrayViewFromImage(mask) > 0.5
    else:
        up = up / np.linalg.norm(up)
        back = np.array([0.0, 1.0, 0.0]) - up[1] * up
        back /= np.linalg.norm(back)
        left = np.cross(back, up)  # right-handed: left x back = up, as L x P = S
        rot = np.stack([left, back, up], axis=1)  # columns: directions of the new index axes
        step = float(min(mask.GetSpacing()))
        size = np.array(mask.GetSize())
        corners = np.array([mask.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                            for corner in np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in size])).reshape(3, -1).T])
        local = corners @ rot
        lo, hi = local.min(axis=0), local.max(axis=0)
        n = np.ceil((hi - lo) / step).astype(int) + 1
        grid = sitk.Resample(mask, [int(v) for v in n], sitk.Transform(),
                             sitk.sitkLinear, [float(v) for v in rot @ lo], [step] * 3,
                             [float(v) for v in rot.ravel()], 0.0, sitk.sitkFloat32)
        arr = sitk.GetArrayViewFromImage(grid) > 0.5
    spacing = grid.GetSpacing()
    pixel_mm2 = spacing[0] * spacing[1]
    # every slice's holes at once: the background's in-plane components (the structure keeps slices
    # apart) that do not reach the slice's edge
    background, _ = ndimage.label(~arr, _IN_PLANE)
    edge = np.unique(np.concatenate([background[:, [0, -1], :].ravel(), background[:, :, [0, -1]].ravel()]))
    sizes = np.bincount(background.ravel())
    fronts: Dict[int, int] = {}
    biggest: Dict[int, int] = {}
    for index, box in enumerate(ndimage.find_objects(background), start=1):
        if box is None or index in edge:
            continue
        k = box[0].start
        if sizes[index] > biggest.get(k, 0):
            biggest[k] = sizes[index]
            fronts[k] = box[1].start  # smallest P index = front wall
    fronts = {k: j for k, j in fronts.items() if biggest[k] * pixel_mm2 >= MIN_CANAL_AREA_MM2}
    if not fronts:
        return None
    default = int(np.median(list(fronts.values())))
    limit = np.array([fronts.get(k, default) for k in range(arr.shape[0])])
    kk, jj, ii = np.nonzero(arr & (np.arange(arr.shape[1])[None, :, None] < limit[:, None, None]))
    if kk.size == 0:
        return None
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint((float(ii.mean()), float(jj.mean()), float(kk.mean()))))
    return centre, len(fronts) * spacing[2]


_IMAGE_EXTS = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _is_label_file(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_IMAGE_EXTS) and any(h in lower for h in _LABEL_HINTS)


def _find_image(folder: str) -> Optional[str]:
    for name in _IMAGE_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    for name in sorted(os.listdir(folder)):
        lower = name.lower()
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not _is_label_file(name) and lower.endswith(
                ("_ct.nii.gz", "_ct.nii", "_0000.nii.gz", ".nii.gz", ".nii", ".nrrd", ".mha")):
            return path
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and name.lower() in ("dicom", "ct", "image", "series"):
            return path
    return None


def find_label_file(folder: str, pattern: Optional[str]) -> Optional[str]:
    """The label map in ``folder``: the first file matching ``pattern``, else the first that looks like one
    (a TotalSegmentator "total" map first); None if there is none."""
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) and n.lower().endswith(_IMAGE_EXTS)]
    else:
        names = [n for n in names if _is_label_file(n)]
    if not names:
        return None
    # A full TotalSegmentator map ("total") is preferred over task-specific maps beside it.
    names.sort(key=lambda n: (0 if "total" in n.lower() else 1, n))
    return os.path.join(folder, names[0])


def case_from_folder(folder: str, seg: Optional[str] = None, id_map: str = "auto",
                     sacrum_as_s2: bool = False, case_id: Optional[str] = None,
                     centre: str = "mass") -> Optional[AnnotatedCase]:
    """The case in ``folder`` (a CT file or DICOM folder, plus a label map), or None.

    ``seg`` is a file-name pattern (``fnmatch``) picking the label map when several are there.
    """
    image = _find_image(folder)
    label_path = find_label_file(folder, seg)
    if image is None or label_path is None:
        return None
    notes = [f"ground truth from {os.path.basename(label_path)}"]
    centroids, partial = label_centroids(read_image(label_path), id_map=id_map,
                                         sacrum_as_s2=sacrum_as_s2, notes=notes, centre=centre)
    return AnnotatedCase(case_id=case_id or os.path.basename(os.path.normpath(folder)), image_path=image,
                         centroids=centroids, notes=notes, partial=partial, source="labelmap")


def find_labelmap_cases(root: str, seg: Optional[str] = None, id_map: str = "auto",
                        sacrum_as_s2: bool = False, centre: str = "mass") -> List[AnnotatedCase]:
    """Cases under ``root``: the folder itself if it is a case, else each sub-folder that is.

    ``root`` may also be a label-map file; the CT is then looked for beside it.
    """
    if os.path.isfile(root):
        folder = os.path.dirname(os.path.abspath(root))
        case = case_from_folder(folder, seg=os.path.basename(root), id_map=id_map, sacrum_as_s2=sacrum_as_s2,
                                centre=centre)
        return [case] if case else []
    case = case_from_folder(root, seg=seg, id_map=id_map, sacrum_as_s2=sacrum_as_s2, centre=centre)
    if case is not None:
        return [case]
    cases = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            sub = case_from_folder(path, seg=seg, id_map=id_map, sacrum_as_s2=sacrum_as_s2, centre=centre)
            if sub is not None:
                cases.append(sub)
    return cases
