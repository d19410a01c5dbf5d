"""What a labeling run returns. Torch-free, so writers and the Slicer panel can use it without PyTorch."""

from dataclasses import dataclass, field

import numpy as np

from .vertebrae import region_of


@dataclass
class LabeledVertebra:
    """One labeled vertebra: its name, centroid in LPS millimetres and confidence in [0, 1].

    ``basis`` says in a few words how the name was reached, for the reader who checks it: e.g.
    "last rib pair", "counted from the sacrum", "network only" (empty for results made before naming
    was anchored).
    """

    name: str
    position_lps: np.ndarray
    confidence: float
    basis: str = ""

    @property
    def position_ras(self) -> np.ndarray:
        return self.position_lps * np.array([-1.0, -1.0, 1.0])

    @property
    def region(self) -> str:
        return region_of(self.name)


@dataclass
class LabelingResult:
    """Everything a caller needs to report a labeling run.

    Attributes:
        vertebrae: labeled vertebrae, cranio-caudal order.
        probabilities: per vertebra name, the highest presence probability any block gave (for mAP).
        timings: seconds per stage.
        messages: things the user should know (no spine found, oblique input, untrained model...).
        model_trained: False when the weights are the untrained placeholder: results are meaningless.
        anchors: the anatomical anchors the names were counted from ("last rib pair: T12 (body 14 of 15)").
    """

    vertebrae: list[LabeledVertebra] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    model_trained: bool = True
    num_blocks: int = 0
    anchors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{name: position_lps}``."""
        return {v.name: v.position_lps for v in self.vertebrae}
