"""Pretraining the embedded tiny CLIP on a captioned synthetic corpus.

``corpus`` draws the captioned normal/defective pairs, ``train`` runs open_clip's model and loss
over them, ``card`` writes the model card from a run's log. The shipped result is
``clipad-tiny-ViT`` / ``"clipad-synthetic"`` (``backbones/weights/``), made by
``scripts/pretrain_tiny_clip.py`` and shown by ``notebooks/01_pretrain_tiny_clip.ipynb``.
"""
from . import corpus
from .card import model_card, shipped_log, write_model_card
from .train import (PretrainConfig, TrainingLog, evaluate, evaluate_backbone, learning_rate_factor, pretrain,
                    save_log, save_weights)

__all__ = ["PretrainConfig", "TrainingLog", "corpus", "evaluate", "evaluate_backbone", "learning_rate_factor",
           "model_card", "pretrain", "save_log", "save_weights", "shipped_log", "write_model_card"]
