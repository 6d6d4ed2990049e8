"""Synthetic chest-radiograph phantoms: the embedded default dataset of the demo and the tests.

Each phantom is a procedurally drawn frontal radiograph (body, lungs, heart, mediastinum,
spine, ribs, clavicles, diaphragm) with findings of known kind, side and extent, their boxes
and masks, and a template report that names them. A model that learns must beat chance on it.

Layout: ``geometry`` (frames, field helpers), ``anatomy`` (the normal thorax), ``findings``
(planning and drawing), ``render`` (exposure and noise), ``reports`` (templates), ``phantom``
(one image), ``writer`` (a dataset on disk in the generic-manifest layout).
"""

from maco_cxr.data.synthetic.findings import FINDINGS, NORMAL, Finding, cardiothoracic_ratio
from maco_cxr.data.synthetic.phantom import Phantom, generate_phantom
from maco_cxr.data.synthetic.writer import write_synthetic_dataset

__all__ = [
    "FINDINGS",
    "NORMAL",
    "Finding",
    "Phantom",
    "cardiothoracic_ratio",
    "generate_phantom",
    "write_synthetic_dataset",
]
