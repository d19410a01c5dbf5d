"""Synthetic spine CT generator: procedural anatomy, CT-like rendering, exact centroids.

>>> from training.synthetic import generate_case
>>> case = generate_case(0)
>>> sorted(case.centroids)  # doctest: +SKIP
"""

from .generator import SyntheticCase, generate_case

__all__ = ["SyntheticCase", "generate_case"]
