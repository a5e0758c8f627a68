"""Vision-language labels of units over an open vocabulary, every label verified by generated images.

- Vision-language models (:class:`VisionLanguageModel`, :class:`OpenClipVLM`, :func:`load_vlm`):
  any open_clip architecture, or the embedded tiny CLIPs trained on the synthetic world; image and
  text embeddings cached on disk (:func:`embed_images`, :func:`embed_texts`); their zero-shot
  quality (:func:`concept_auc`) and LinEx calibration (:func:`fit_calibration`).
- :class:`ClipDissect`: CLIP-Dissect (Oikarinen & Weng, "CLIP-Dissect: Automatic Description of
  Neuron Representations in Deep Vision Networks", ICLR 2023), soft-WPMI and the anchor's other
  similarity functions, every unit of a layer at once.
- :class:`LinEx`: linear explanations (Oikarinen & Weng, "Linear Explanations for Individual
  Neurons", ICML 2024) with simulation-based scoring (:func:`simulation_r`).
- :class:`Sieve`: SIEVE ("Select, Hypothesize and Verify: Towards Verified Neuron Concept
  Interpretation"): select units by their activation distribution, hypothesize concepts from
  clustered crops, verify them by generated images.
- :class:`Verifier`: one verifier for every method (Activation Rate, and CoSy's AUC and MAD:
  Kopf et al., "CoSy: Evaluating Textual Explanations of Neurons", NeurIPS 2024), over images from
  a :class:`Generator` (the synthetic world's renderer, or a local diffusers pipeline).
"""

from ._clip_dissect import SIMILARITY_FUNCTIONS, ClipDissect, image_text_similarity, similarity_matrix
from ._embeddings import embed_images, embed_texts, vlm_cache_dir
from ._generate import (
                        COSY_TEMPLATE,
                        GENERATOR_CHOICES,
                        DiffusersGenerator,
                        Generator,
                        SyntheticGenerator,
                        build_tiny_pipeline,
                        load_generator,
)
from ._linex import (
                        LinEx,
                        concept_probabilities,
                        format_linear,
                        label_simulation_r,
                        pearson_columns,
                        simulation_r,
                        split_indices,
                        write_linex_table,
)
from ._sieve import Sieve, peak_crop_boxes, selection_ratio, top_samples
from ._tiny_clips import DEFAULT_VLMS, TINY_CLIPS, TinyClip, load_vlm, tiny_clip, train_tiny_clip
from ._verify import Verifier, activation_rate, cosy_scores, mean_activation_rate_filtered, probe_thresholds
from ._vlm import CALIBRATION, FALLBACK_CALIBRATION, OpenClipVLM, VisionLanguageModel, concept_prompt
from ._vlm_quality import auc_by_category, concept_auc, fit_calibration

#: The labelling methods of ``neurcore label`` (and ``neurcore dissect --methods``).
METHODS = ("clip-dissect", "linex", "sieve")

__all__ = [
    "METHODS",
    "VisionLanguageModel",
    "OpenClipVLM",
    "load_vlm",
    "tiny_clip",
    "train_tiny_clip",
    "TinyClip",
    "TINY_CLIPS",
    "DEFAULT_VLMS",
    "CALIBRATION",
    "FALLBACK_CALIBRATION",
    "concept_prompt",
    "concept_auc",
    "auc_by_category",
    "fit_calibration",
    "embed_images",
    "embed_texts",
    "vlm_cache_dir",
    "ClipDissect",
    "SIMILARITY_FUNCTIONS",
    "image_text_similarity",
    "similarity_matrix",
    "LinEx",
    "concept_probabilities",
    "split_indices",
    "simulation_r",
    "label_simulation_r",
    "pearson_columns",
    "format_linear",
    "write_linex_table",
    "Sieve",
    "selection_ratio",
    "top_samples",
    "peak_crop_boxes",
    "Verifier",
    "activation_rate",
    "cosy_scores",
    "mean_activation_rate_filtered",
    "probe_thresholds",
    "Generator",
    "SyntheticGenerator",
    "DiffusersGenerator",
    "load_generator",
    "build_tiny_pipeline",
    "GENERATOR_CHOICES",
    "COSY_TEMPLATE",
]
