"""Anomalies made for training: random perturbation and NSA (natural synthetic anomalies)."""
from .anomalies import (SYNTHESIZERS, NSAConfig, RandomPerturbationConfig, SynthesisError, SyntheticAnomaly,
                        natural_synthetic_anomaly, random_perturbation, synthesis_fingerprint, synthesize_anomalies,
                        synthesize_shot_anomalies)
from .poisson import poisson_blend

__all__ = ["SYNTHESIZERS", "NSAConfig", "RandomPerturbationConfig", "SynthesisError", "SyntheticAnomaly",
           "natural_synthetic_anomaly", "poisson_blend", "random_perturbation", "synthesis_fingerprint", "synthesize_anomalies",
           "synthesize_shot_anomalies"]
