"""Semi-synthetic archive generator (real MNI152 anatomy, synthetic contrasts and lesions)."""

from fdn.synth.families import FAMILIES, LesionFamily, parse_families
from fdn.synth.generator import (
    SynthCase,
    SynthConfig,
    case_id,
    healthy_cases,
    synthesize_archive,
    synthesize_case,
)

__all__ = [
    "FAMILIES",
    "LesionFamily",
    "parse_families",
    "SynthCase",
    "SynthConfig",
    "case_id",
    "healthy_cases",
    "synthesize_archive",
    "synthesize_case",
]
