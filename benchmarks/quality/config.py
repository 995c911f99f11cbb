"""The quality benchmark's run configuration: everything one run depends on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QualityConfig:
    """Everything one run depends on (stored whole in results.json)."""

    model: str
    model_no_dm: str | None = None
    train_archive: str | None = None  # default: read from each model's TRAIN_COMMAND.txt
    test_archive: str | None = None  # default: synthesised into OUT/work
    test_cases: int = 60
    test_seed: int = 1000
    test_healthy_fraction: float = 0.25
    size: int | None = None  # synthesis size; default: the model's input size
    out: str = "quality-cpu"
    topq: int = 10
    random_draws: int = 20
    raw_side: int = 16
    seed: int = 0
    appendix_f_repeats: int = 5
    lut_repeats: int = 3
    classifier_epochs: int = 8
    classifier_seconds: float = 60.0
    classifier_max_slices: int = 4000
    classifier_seeds: int = 3
    quick: bool = False

    def __post_init__(self) -> None:
        if self.topq < 1:
            raise ValueError(f"topq must be >= 1, got {self.topq}")
        if self.test_cases < 2:
            raise ValueError(f"test_cases must be >= 2, got {self.test_cases}")
        if self.quick:
            self.random_draws = min(self.random_draws, 5)
            self.appendix_f_repeats = 1
            self.lut_repeats = 1
            self.classifier_epochs = min(self.classifier_epochs, 3)
            self.classifier_seconds = min(self.classifier_seconds, 20.0)
            self.classifier_seeds = 1
