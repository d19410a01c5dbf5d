"""Posterior instrumentation (pedicle screws and rods) and their streak artefacts."""


import numpy as np

from . import tissues as T
from .anatomy import Spine
from .canvas import Canvas, sd_capsule


def paint_implants(cv: Canvas, spine: Spine, rng: np.random.Generator) -> dict:
    """Screws through both pedicles of 2-6 consecutive thoraco-lumbar levels, joined by two rods."""
    cand = [i for i, lv in enumerate(spine.levels) if lv.kind in ("thoracic", "lumbar", "sacral")
            and lv.name != "S2"]
    n = int(rng.integers(2, 7))
    start = int(rng.choice(cand[max(0, len(cand) - 14):len(cand) - 1]))
    levels = [spine.levels[i] for i in range(start, min(start + n, len(spine.levels)))
              if spine.levels[i].kind in ("thoracic", "lumbar", "sacral")]
    heads: dict[int, list[np.ndarray]] = {-1: [], 1: []}
    r = rng.uniform(2.5, 3.5)
    for lv in levels:
        ac = -(lv.D / 2 + lv.canal_d / 2 + 1.0)
        for s in (-1, 1):
            entry = np.array([s * (lv.canal_w / 2 + lv.ped_w * 0.5 + 3), ac - lv.canal_d / 2 - 6, lv.H * 0.12])
            tip = np.array([s * lv.W * 0.1, lv.D * 0.3, lv.H * 0.05])
            d = tip - entry
            d /= np.linalg.norm(d)
            length = rng.uniform(35, 50)
            tip = entry + d * length
            head = entry - d * 9
            cv.paint_tissue(lv.frame, np.minimum(head, tip) - 8, np.maximum(head, tip) + 8,
                            lambda L, A, U, a=entry, b=tip, h=head: np.minimum(
                                sd_capsule(L, A, U, a, b, r), sd_capsule(L, A, U, h, a, r * 1.8)), T.METAL)
            heads[s].append(lv.frame.to_world(head))
    for s in (-1, 1):
        if len(heads[s]) >= 2:
            cv.stamp_tube(np.array(heads[s]), rng.uniform(2.5, 3.2), tissue=T.METAL)
    metal = cv.tissue == T.METAL
    cv.bone[metal] = 0.0
    cv.cortex[metal] = 0.0
    return {"levels": [lv.name for lv in levels]}


def add_streaks(hu: np.ndarray, cv: Canvas, rng: np.random.Generator) -> None:
    """Add radiating bright/dark streaks in every axial slice that contains metal (in place)."""
    metal = cv.tissue == T.METAL
    zs = np.nonzero(metal.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return
    ny, nx = hu.shape[1:]
    yy = (np.arange(ny, dtype=np.float32) * cv.spacing[1])[:, None]
    xx = (np.arange(nx, dtype=np.float32) * cv.spacing[0])[None, :]
    amp = rng.uniform(100, 600)
    n_lines = int(rng.integers(6, 14))
    add = None
    for z in zs:
        # streaks change slowly from slice to slice: recompute every third metal slice only
        if add is None or z % 3 == 0:
            add = _slice_streaks(metal[z], xx, yy, cv, rng, amp, n_lines)
        hu[z] += add


def _slice_streaks(metal2d: np.ndarray, xx: np.ndarray, yy: np.ndarray, cv: Canvas,
                   rng: np.random.Generator, amp: float, n_lines: int) -> np.ndarray:
    """Streak pattern of one axial slice: lines through metal points plus a dark band between two."""
    ny, nx = metal2d.shape
    iy, ix = np.nonzero(metal2d)
    pick = rng.choice(len(iy), size=min(2, len(iy)), replace=False)
    centres = [(ix[p] * cv.spacing[0], iy[p] * cv.spacing[1]) for p in pick]
    add = np.zeros((ny, nx), np.float32)
    for cx, cy in centres:
        dx, dy = xx - cx, yy - cy
        decay = np.exp(-(np.sqrt(dx * dx + dy * dy) + 1.0) / 80.0)
        for ang in rng.uniform(0, np.pi, n_lines):
            dist = dx * np.float32(np.sin(ang)) - dy * np.float32(np.cos(ang))
            add += np.float32(rng.choice([-1, 1]) * amp / len(centres)) * np.exp(-dist * dist / 4.0) * decay
    if len(centres) >= 2:  # dark band between two metal objects (photon starvation)
        (x0, y0), (x1, y1) = centres[0], centres[1]
        seg = np.array([x1 - x0, y1 - y0])
        ln = np.linalg.norm(seg) + 1e-6
        t = np.clip(((xx - x0) * seg[0] + (yy - y0) * seg[1]) / ln ** 2, 0, 1)
        dist = np.hypot(xx - x0 - t * seg[0], yy - y0 - t * seg[1])
        add -= np.float32(amp * 1.5) * np.exp(-dist * dist / 18.0)
    return add
