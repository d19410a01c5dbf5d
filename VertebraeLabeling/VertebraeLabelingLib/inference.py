"""The labeling pipeline: CT image in, named vertebral centroids (LPS mm) out.

``label_ct`` is the one implementation used by the command line, the Slicer module and the
training package's evaluation.
"""

import time
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch

from . import aggregation, blocks, naming, preprocessing, review
from .defaults import DEFAULT_ANCHORS, DEFAULT_MIN_PROBABILITY, DEFAULT_MIRROR, DEFAULT_STRIDE
from .errors import CancelledError, InputImageError
from .image_io import is_oblique, read_image, validate_ct
from .model_io import load_model
from .network import BLOCK_SHAPE, VertebraeNet
from .results import LabeledVertebra, LabelingResult
from .vertebrae import VERTEBRA_NAMES

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else CPU. Asking for CUDA without one is an error, not a silent fallback."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but PyTorch sees no GPU; use --device cpu or auto.")
    return torch.device(device)


def _check_cancel(cancel: Optional[CancelCallback]) -> None:
    if cancel is not None and cancel():
        raise CancelledError("Labeling was cancelled.")


def predict_blocks(
    model: VertebraeNet,
    volume: np.ndarray,
    block_list: list[blocks.Block],
    device: torch.device,
    fill: float,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    progress_span=(0.0, 1.0),
    mirror: bool = False,
) -> list[aggregation.BlockPrediction]:
    """Run the network on each block of a normalised canonical volume.

    With ``mirror`` each block is also run left-right mirrored and that second look is mapped back and
    returned as a prediction of its own, right after the plain one (two per block).
    """
    out: list[aggregation.BlockPrediction] = []
    memory_format = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    lo, hi = progress_span
    with torch.inference_mode():
        for n, block in enumerate(block_list):
            _check_cancel(cancel)
            data = blocks.extract_block(volume, block, fill)
            views = [data, np.ascontiguousarray(data[..., ::-1])] if mirror else [data]
            for mirrored, view in enumerate(views):
                x = torch.from_numpy(view)[None, None].to(device).contiguous(memory_format=memory_format)
                pred = model(x)
                probs = torch.sigmoid(pred["logits"][0].float()).cpu().numpy()
                local = pred["coords"][0].float().cpu().numpy()
                if mirrored:
                    local[:, 2] = block.shape[2] - 1 - local[:, 2]
                out.append(aggregation.BlockPrediction(block, probs, local + np.asarray(block.start, dtype=float)))
            if progress is not None:
                progress(lo + (hi - lo) * (n + 1) / len(block_list), f"block {n + 1}/{len(block_list)}")
    return out


def label_ct(
    image: sitk.Image,
    model: Optional[VertebraeNet] = None,
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    stride: int = DEFAULT_STRIDE,
    min_probability: float = DEFAULT_MIN_PROBABILITY,
    exhaustive: bool = False,
    model_path: Optional[str] = None,
    mirror: bool = DEFAULT_MIRROR,
    anchors: bool = DEFAULT_ANCHORS,
) -> LabelingResult:
    """Find and name the vertebrae in ``image``.

    Args:
        image: a 3-D CT in Hounsfield units, any orientation and spacing.
        model: a loaded network; when None the bundled (or ``model_path``) weights are loaded.
        device: "auto", "cpu", "cuda" or "cuda:N".
        progress: called as ``progress(fraction, message)``.
        cancel: polled between steps; returning True raises :class:`CancelledError`.
        stride: cranio-caudal step between blocks (voxels of 2 mm); smaller = more votes, slower.
        min_probability: a block's vote for a vertebra counts only above this probability.
        exhaustive: tile the whole volume instead of following the spine (slow; for comparison).
        mirror: also look at each block left-right mirrored, as a second vote (twice the network time).
        anchors: name the levels by counting bodies from anatomical anchors (ribs, sacrum, C2) together with
            the network's probabilities (:mod:`naming`); False keeps the network's names alone.
    Raises:
        InputImageError (also when the spine contradicts the image's orientation: an image stored upside
        down or front-to-back reversed), ModelFileError, CancelledError.
    """
    result = LabelingResult()
    report = progress or (lambda fraction, message: None)
    t0 = time.perf_counter()
    validate_ct(image)
    if is_oblique(image):
        result.messages.append("The image is oblique; it was resampled onto patient axes.")
    dev = resolve_device(device)
    if model is None:
        model, manifest = load_model(model_path, device="cpu")
        result.model_trained = bool(manifest.get("trained", False))
    else:
        result.model_trained = bool(getattr(model, "trained", True))
    if not result.model_trained:
        result.messages.append("The model is UNTRAINED: the labels below are meaningless.")
    _check_cancel(cancel)
    report(0.02, "resampling to 2 mm")
    volume = preprocessing.to_canonical(image)
    normalized = preprocessing.zscore(volume.hu)
    fill = float(normalized.min())  # the z-scored value of air, for padding blocks
    t1 = time.perf_counter()
    result.timings["preprocess"] = t1 - t0
    _check_cancel(cancel)
    report(0.08, "finding the spine")
    if exhaustive:
        track = None
        block_list = blocks.plan_blocks(volume.shape, None, stride=stride, exhaustive=True)
    else:
        track = blocks.find_spine_track(volume.hu, volume.spacing)
        block_list = blocks.plan_blocks(volume.shape, track, stride=stride)
    t2 = time.perf_counter()
    result.timings["spine_search"] = t2 - t1
    result.num_blocks = len(block_list)
    if not block_list:
        result.messages.append("No spine was found in the image (no column of bone); nothing was labeled.")
        report(1.0, "done")
        return result
    predictions = predict_blocks(model, normalized, block_list, dev, fill, report, cancel, (0.1, 0.95), mirror)
    t3 = time.perf_counter()
    result.timings["network"] = t3 - t2
    _check_cancel(cancel)
    name_vertebrae(result, volume, predictions, min_probability, anchors)
    result.timings["aggregate"] = time.perf_counter() - t3
    result.timings["total"] = time.perf_counter() - t0
    if not result.vertebrae:
        result.messages.append("The network found no vertebra with enough confidence.")
    result.messages.extend(review.review_messages(result.vertebrae))
    report(1.0, "done")
    return result


def name_vertebrae(result: LabelingResult, volume: preprocessing.CanonicalVolume,
                   predictions: list[aggregation.BlockPrediction], min_probability: float = DEFAULT_MIN_PROBABILITY,
                   anchors: bool = DEFAULT_ANCHORS) -> None:
    """From the network's block predictions to named vertebrae in ``result`` (points, anchors, notes).

    The network's votes are clustered into its own result (:mod:`aggregation`); with ``anchors`` the levels
    are then counted from the ribs, the sacrum and C2 (:mod:`naming`), which may rename them or add bodies
    the network left out. Raises InputImageError when the spine contradicts the image's orientation.
    """
    agg = aggregation.aggregate(predictions, volume.spacing, min_probability, volume.shape)
    result.probabilities = agg.max_probabilities
    decision = naming.anchored_labels(volume.hu, volume.spacing, agg.candidates, agg.chosen) if anchors else None
    if decision is not None and decision.orientation_problems:
        # Labels on an image whose header contradicts its pixels would be confidently wrong.
        raise InputImageError(" ".join(decision.orientation_problems))
    if decision is not None and decision.labels:
        named = [(lab.label, lab.position, lab.confidence, lab.basis) for lab in decision.labels]
    else:
        basis = decision.network_basis if decision is not None else "network only"
        named = [(c.label, c.position, c.confidence, basis) for c in agg.chosen]
        named += [(lab.label, lab.position, lab.confidence, lab.basis)
                  for lab in (decision.added if decision is not None else [])]
        named.sort(key=lambda item: item[0])
    for label, position, confidence, basis in named:
        result.vertebrae.append(LabeledVertebra(
            name=VERTEBRA_NAMES[label],
            position_lps=volume.index_to_lps(position),
            confidence=float(confidence),
            basis=basis,
        ))
    if decision is not None:
        result.anchors = list(decision.naming.anchors)
        result.messages.extend(decision.naming.notes)


def label_file(path: str, **kwargs) -> LabelingResult:
    """Read a CT file or DICOM folder and label it; keyword arguments go to :func:`label_ct`."""
    return label_ct(read_image(path), **kwargs)


__all__ = ["BLOCK_SHAPE", "LabeledVertebra", "LabelingResult", "label_ct", "label_file", "name_vertebrae",
           "resolve_device"]
