"""Test and benchmark support: concept sets with units planted with known formulas, and the mask
engine's demo (``neurcore demo``). Not used by the library itself."""

from ._demo import concept_world, run_demo
from ._planted import blob_concepts, plant_units, random_formula

__all__ = ["blob_concepts", "random_formula", "plant_units", "concept_world", "run_demo"]
