"""Loaders for annotated spine CTs; every loader returns a list of :class:`AnnotatedCase`.

``load_dataset("verse:/data/verse20")`` is the one entry point the command lines use. A spec is
``KIND:PATH`` with optional ``?key=value&key=value`` options:

- ``verse:PATH``    VerSe 2019/2020, any release layout (``convention=auto|subject|miccai2019|miccai2020``)
- ``csi:PATH``      CSI 2014 / SpineWeb NIfTI + ``.lml`` (``frame=image_mm|lps|ras``)
- ``labelmap:PATH`` a CT + multi-label map per folder (``seg=GLOB``, ``map=auto|ts|verse``,
  ``sacrum_as_s2=1``, ``centre=mass|body``: whole-vertebra centre of mass, or the vertebral body centre
  estimated from the mask, the convention of VerSe, CSI and the generator)
- ``markups:PATH``  a CT + the Slicer ``.mrk.json`` point list(s) a person corrected, one folder per case
  (``DIR/<case>/ct.nii.gz`` + ``*.mrk.json``, as the Slicer panel's "Save as training case" writes it)

All centroids are LPS mm; only the 26 network labels C1..S2 are kept.
"""

from typing import Dict, List, Tuple

from .common import AnnotatedCase, ImageGeometry, read_image
from .csi import find_csi_cases, read_lml_centroids, write_lml
from .labelmap import find_labelmap_cases, label_centroids
from .markups import find_markups_cases, read_markups_points
from .verse import find_verse_cases, read_verse_centroids, write_verse_centroids

__all__ = [
    "AnnotatedCase", "ImageGeometry", "read_image", "load_dataset", "parse_spec",
    "find_verse_cases", "read_verse_centroids", "write_verse_centroids",
    "find_csi_cases", "read_lml_centroids", "write_lml",
    "find_labelmap_cases", "label_centroids",
    "find_markups_cases", "read_markups_points",
]

KINDS = ("verse", "csi", "labelmap", "markups")
MAP_ALIASES = {"auto": "auto", "ts": "totalsegmentator", "totalsegmentator": "totalsegmentator",
                "verse": "verse"}


def parse_spec(spec: str) -> Tuple[str, str, Dict[str, str]]:
    """``"labelmap:/d?seg=*total*"`` -> ``("labelmap", "/d", {"seg": "*total*"})``."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise ValueError(f"data spec {spec!r} must start with one of {', '.join(k + ':' for k in KINDS)}")
    path, _, query = rest.partition("?")
    options: Dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"data spec option {item!r} must be key=value")
        options[key.strip()] = value.strip()
    if not path:
        raise ValueError(f"data spec {spec!r} has no path")
    return kind, path, options


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def load_dataset(spec: str) -> List[AnnotatedCase]:
    """All annotated cases named by a data spec (module docstring), sorted by case id.

    Raises:
        ValueError: malformed spec or unknown option.
        FileNotFoundError: the path does not exist.
    """
    import os

    kind, path, options = parse_spec(spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{kind}: no such file or folder: {path}")
    allowed = {"verse": {"convention"}, "csi": {"frame"}, "labelmap": {"seg", "map", "sacrum_as_s2", "centre"},
               "markups": set()}[kind]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"{kind}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if kind == "verse":
        return find_verse_cases(path, convention=options.get("convention", "auto"))
    if kind == "csi":
        return find_csi_cases(path, frame=options.get("frame", "image_mm"))
    if kind == "markups":
        return find_markups_cases(path)
    id_map = MAP_ALIASES.get(options.get("map", "auto").lower())
    if id_map is None:
        raise ValueError(f"labelmap: map must be one of {sorted(MAP_ALIASES)}")
    return find_labelmap_cases(path, seg=options.get("seg"), id_map=id_map,
                               sacrum_as_s2=_flag(options.get("sacrum_as_s2", "0")),
                               centre=options.get("centre", "mass"))
