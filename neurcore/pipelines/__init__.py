"""End-to-end runs: a model, its layers and a probe in; results, caches and an HTML report out.

Each run reads as set-up -> extract -> explain -> write, writes every artifact atomically under its
output folder and resumes where a killed run stopped:

- :func:`dissect`: rule explanations of every unit (Network Dissection, beam, optimal or clustered
  search), optionally with the vision-language labels beside them (``neurcore dissect``).
- :func:`label`: CLIP-Dissect, LinEx and SIEVE labels, every one verified by generated images
  (``neurcore label``).
- :func:`circuit`: the circuit of a class by NeurFlow or NeuCEPT (``neurcore circuit``).
- :func:`compare`: two sets of explanations of the same units (neurcore's or another tool's files),
  both re-scored by neurcore's verifier (``neurcore compare``).
"""

from ._circuit import circuit
from ._compare import COMPARE_COLUMNS, compare, read_explanations
from ._dissect import dissect
from ._label import label, read_vocabulary

__all__ = ["dissect", "label", "circuit", "compare", "read_explanations", "COMPARE_COLUMNS", "read_vocabulary"]
