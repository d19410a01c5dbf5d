"""Training package for VertebraeLabeling: synthetic data, real-data loaders, training and evaluation.

It imports the core library (``VertebraeLabeling.VertebraeLabelingLib``); the core never imports it.
"""
