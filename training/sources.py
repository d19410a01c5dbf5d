"""Where training cases come from: the synthetic generator, label maps painted with random intensities
(``painted:DIR``, :mod:`training.painted`) or a real annotated data set.

Seeds of the synthetic generator (and of the painter) are split once, here, so no evaluation case is
ever trained on: training uses seeds below ``VALIDATION_SEED0``; validation (LR schedule) uses 800 000 +;
the hold-out evaluation uses 900 000 +. Painted validation cases are new paintings of the training label
maps: held out in appearance and deformation, not in shape.
"""

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Callable, Optional, Union

import numpy as np

from .prepared import PreparedCase, annotated_span, prepare_case

VALIDATION_SEED0 = 800_000
HOLDOUT_SEED0 = 900_000

CaseFactory = Callable[[int], PreparedCase]
#: One data spec, or several that are mixed (``synthetic`` and ``painted:DIR``, for instance).
Specs = Union[str, Sequence[str]]


#: How a mix is written in one string (a manifest's ``data``, a sweep's ``--variant``): ``synthetic + painted:DIR``.
MIX_SEPARATOR = " + "


def as_spec_list(specs: Specs) -> list[str]:
    """``specs`` as a non-empty list of data specs."""
    out = [specs] if isinstance(specs, str) else list(specs)
    if not out:
        raise ValueError("no data spec given")
    return out


def mix_label(specs: Specs) -> str:
    """One string for one spec or a mix (``synthetic + painted:DIR``); :func:`split_mix_label` reverses it."""
    return MIX_SEPARATOR.join(as_spec_list(specs))


def split_mix_label(label: str) -> list[str]:
    """The specs of a :func:`mix_label` string."""
    return [part.strip() for part in label.split(MIX_SEPARATOR)]


def synthetic_case(seed: int, spacing=(2.0, 2.0, 2.0), **generator_options) -> PreparedCase:
    """Generate synthetic case ``seed`` and prepare it for training.

    Training generates directly at the 2 mm working spacing (``spacing=None`` gives the realistic
    random acquisition grid, which evaluation uses, at ~5x the cost). ``generator_options`` go to
    :func:`training.synthetic.generate_case` (see :func:`synthetic_options`).
    """
    from .synthetic import generate_case

    case = generate_case(seed, spacing=spacing, with_labels=False, **generator_options)
    prepared = prepare_case(case.image, case.centroids, case_id=f"synthetic-{seed}")
    if not np.isfinite(prepared.volume).all() or not prepared.present.any():
        raise ValueError(f"synthetic case {seed} is unusable")
    return prepared


def _variant_name(text: str) -> str:
    """A ``variant=`` value checked against the generator's names (a side suffix is kept)."""
    from .synthetic.variants import parse_variant

    parse_variant(text)  # raises ValueError on an unknown name
    return text


#: generator options a ``synthetic?...`` spec may set, with their parsers ("a-b" is a range)
_SYNTHETIC_OPTIONS: dict = {
    "cortical_mm": lambda v: tuple(float(x) for x in v.split("-")),
    "arch_dense": float,
    "rib_dense": float,
    "thoracic_depth": float,
    # transitional anatomy (training.synthetic.variants): force one, or change how often each is drawn
    "variant": _variant_name,
    "transitional_prob": float,
    "eleven_ribs_prob": float,
    "lumbar_rib_prob": float,
    "cervical_rib_prob": float,
    "sacralised_l5_prob": float,
}


def synthetic_options(spec: str) -> dict:
    """Generator options of a spec like ``synthetic?cortical_mm=1.0-2.0&arch_dense=0`` (``{}`` for plain
    ``synthetic``): the knobs of :func:`training.synthetic.generate_case` an experiment may turn, including
    the transitional anatomy (``synthetic?variant=13_ribs`` forces a lumbar rib pair on L1 in every case,
    ``synthetic?lumbar_rib_prob=0.2`` makes it more common)."""
    _, _, query = spec.partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key not in _SYNTHETIC_OPTIONS:
            raise ValueError(f"unknown synthetic option {key!r}; known: {', '.join(_SYNTHETIC_OPTIONS)}")
        options[key] = _SYNTHETIC_OPTIONS[key](value)
    if "cortical_mm" in options and len(options["cortical_mm"]) != 2:
        raise ValueError("cortical_mm takes a range, e.g. cortical_mm=1.0-2.0")
    return options


def seeded_factory(spec: str) -> Optional[CaseFactory]:
    """The case maker of an endless, seeded spec (``synthetic[?options]``, ``painted:DIR``); None for real data."""
    if spec == "synthetic" or spec.startswith("synthetic?"):
        options = synthetic_options(spec)
        return functools.partial(synthetic_case, **options) if options else synthetic_case
    if spec.startswith("painted:"):
        from .painted import PaintedSource

        return PaintedSource(spec)
    return None


class CaseSource:
    """An endless, deterministic stream of prepared cases for one data-loading worker."""

    def __init__(self, spec: str, seed: int, stream_id: int, num_streams: int) -> None:
        self.spec = spec
        self.seed = seed
        self.stream_id = stream_id
        self.num_streams = num_streams
        self._real: Optional[list] = None
        self._factory = seeded_factory(spec)
        if self._factory is None:
            from .datasets import load_dataset

            cases = load_dataset(spec)
            if not cases:
                raise ValueError(f"no annotated case found in {spec}")
            self._real = cases

    def __iter__(self) -> Iterator[PreparedCase]:
        if self._real is None:
            # Interleave seeds over streams: stream s gets seed0 + s, seed0 + s + n, ...
            n = 0
            while True:
                seed = (self.seed * 7919 + self.stream_id + n * self.num_streams) % VALIDATION_SEED0
                n += 1
                try:
                    yield self._factory(seed)
                except Exception as exc:  # noqa: BLE001 - one bad case must not stop a long run
                    print(f"skipping {self.spec} case {seed}: {exc}", flush=True)
        else:
            rng = np.random.default_rng([self.seed, self.stream_id])
            while True:
                for idx in rng.permutation(len(self._real)):
                    if idx % self.num_streams != self.stream_id % self.num_streams and len(self._real) >= self.num_streams:
                        continue
                    yield prepare_annotated(self._real[idx])


def mixed_cases(specs: Specs, seed: int, stream_id: int, num_streams: int) -> Iterator[PreparedCase]:
    """Cases from several data specs in turn, one from each (equal shares; repeat a spec to weight it).

    Each spec keeps its own deterministic stream (:class:`CaseSource`), so a mix is as reproducible as its parts.
    """
    streams = [iter(CaseSource(spec, seed, stream_id, num_streams)) for spec in as_spec_list(specs)]
    while True:
        for stream in streams:
            yield next(stream)


def validation_cases(spec: Specs, count: int) -> list[PreparedCase]:
    """A fixed list of validation cases (synthetic or painted seeds from VALIDATION_SEED0, or the first real cases).

    Several specs share ``count`` evenly (rounded up), in the order given.
    """
    if not isinstance(spec, str):
        specs = as_spec_list(spec)
        share = math.ceil(count / len(specs))
        return [case for one in specs for case in validation_cases(one, share)]
    factory = seeded_factory(spec)
    if factory is not None:
        out, seed = [], VALIDATION_SEED0
        while len(out) < count:
            try:
                out.append(factory(seed))
            except Exception as exc:  # noqa: BLE001
                print(f"skipping validation case {seed}: {exc}", flush=True)
            seed += 1
        return out
    from .datasets import load_dataset

    cases = load_dataset(spec)[:count]
    return [prepare_annotated(c) for c in cases]


def prepare_annotated(case) -> PreparedCase:
    """A real annotated case (:class:`training.datasets.common.AnnotatedCase`) ready for training.

    Vertebrae cut by the image's edge give no centroid to learn from, and the levels outside the annotated
    span are unknown rather than absent (:func:`training.prepared.annotated_span`).
    """
    return prepare_case(case.load_image(), case.whole_centroids(), case_id=case.case_id,
                        known=annotated_span(case.centroids))
