"""The one configuration of the feature decomposing network (FDN) and its training.

Every hyperparameter lives in `FDNConfig`; a checkpoint stores `asdict(config)`, so a model
directory always says how it was built and trained. `PRESETS` holds the paper's four
configurations (Section 4.3.1, Appendix C: 256² input, D = 64, K = 512) and smaller CPU
configurations built by the same code with a width multiplier.
"""

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

# Accepted range of each size-like field. The upper limits are far above any model this
# project trains (the paper's largest: 256² input, 32² codes, K = 512, D = 64, batch 112), and
# low enough that a hostile or mistyped config.json ("codebook_size": 1e12) is refused before
# anything is allocated. Code indices are stored as uint16, so K <= 65,536.
LIMITS: dict[str, tuple[float, float]] = {
    "image_size": (1, 1024),
    "latent_size": (1, 1024),
    "in_channels": (1, 64),
    "num_classes": (2, 256),
    "code_dim": (1, 4096),
    "codebook_size": (1, 65536),
    "width": (1e-3, 16),
    "spade_hidden": (1, 4096),
    "critic_steps": (0, 1000),
    "batch_size": (2, 65536),  # half healthy, half diseased
    "epochs": (1, 10**7),
    "null_code_weight": (0, 1e6),
    "ema_decay": (0, 1),
    "ema_eps": (0, 1),
    "rotation_degrees": (0, 180),
}


@dataclass(frozen=True)
class FDNConfig:
    # --- architecture (Appendix C) ---
    image_size: int = 256  # H = W of the input slice
    latent_size: int = 8  # H' = W' of the code grids
    in_channels: int = 4  # T1, T1Gd, T2, FLAIR
    num_classes: int = 4  # S: background, NET, ED, ET
    code_dim: int = 64  # D
    codebook_size: int = 512  # K
    width: float = 1.0  # multiplier on every filter count of Tables C.1-C.3
    spade_hidden: int = 128  # hidden channels of each SPADE module (Park et al. 2019)
    # --- vector quantization (eq. 1-4, EMA codebooks of Kaiser et al. 2018) ---
    beta: float = 0.25  # commitment weight of eq. 3 (VQ-VAE's value; the paper gives none)
    ema_decay: float = 0.99
    ema_eps: float = 1e-5  # Laplace smoothing of the cluster sizes
    # --- SPADE conditioning of the image decoder (Fig. 3) ---
    # True: the layout is ỹ ⊙ onehot(ŷ) over all S classes, background included, as Fig. 3
    # draws it; False: the softmax of the S - 1 lesion classes (our first reading, kept so
    # that older models load and for the A/B of the quality benchmark).
    spade_masked_layout: bool = True
    # True: x̂^+ and x̂^- are decoded in two passes, so BatchNorm normalises each with its own
    # batch statistics as two calls of f do; False: one pass over the doubled batch.
    separate_decoder_passes: bool = True
    # Null-code prior (our addition, issue #13): > 0 reserves abnormal code 0 for grid cells
    # without lesion. While training, such cells are assigned code 0 and their abnormal
    # features are pulled towards it with this weight; lesion cells take the nearest of codes
    # 1..K-1. Healthy tissue then maps to one code and S_abnormal ignores it. 0 disables it.
    null_code_weight: float = 0.0
    # Encoding with the null-code prior: a cell where the model's own segmentation ŷ finds no
    # lesion pixel gets the null code, whatever its nearest code (the healthy cells the
    # encoder did not collapse). Changes `encode` only, never training; needs the prior.
    gate_abnormal_codes: bool = False
    # Gating repeated on the gated grid until no cell changes (`FDN.gate_codes`), so that
    # every non-null cell of a stored grid is a lesion cell of the ŷ it decodes to. On
    # models/cpu-64-null: S_abnormal (D_A) 75.0 -> 76.6 % of the oracle, healthy slices with
    # a non-null cell 65 -> 17 of 1,747. Changes `encode` only; needs the gate.
    gate_to_fixed_point: bool = False
    # With the null-code prior: hold the null code at the zero vector instead of letting the
    # EMA follow the lesion-free cells, so that "no abnormality" is the zero abnormal feature,
    # the insignificant code of the paper's compactness (4.4.4), and the prior pulls healthy
    # features to zero. Needs the prior.
    null_code_at_origin: bool = False
    # --- losses (eq. 5-12) and Algorithm 1 (Section 4.3.1) ---
    lambda_lat: float = 0.25  # λ1
    lambda_seg: float = 5.0  # λ2
    lambda_rec: float = 5.0  # λ3
    lambda_reg: float = 1e-4  # λ4
    lambda_critic: float = 1e-4  # λ5
    lambda_gp: float = 10.0
    critic_steps: int = 5  # m
    focal_gamma: float = 2.0  # γ
    ssim_data_range: float = 8.0  # L of SSIM's constants, for z-scored intensities
    distribution_matching: bool = True
    # --- optimisation ---
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 112
    epochs: int = 400
    rotation_degrees: float = 10.0  # augmentation: uniform rotation in ±this, plus h-flip

    def __post_init__(self) -> None:
        # Types and upper limits first: a config read from a file (config.json, a checkpoint)
        # must fail here, with a message, before FDN(config) allocates anything.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in (int, "int"):
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                want = "an integer"
            elif f.type in (float, "float"):
                ok = (
                    isinstance(value, numbers.Real)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                )
                want = "a finite number"
            else:
                ok, want = isinstance(value, bool), "true or false"
            if not ok:
                raise ValueError(f"FDNConfig.{f.name} must be {want}, got {value!r}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(
                    f"FDNConfig.{name} must be in [{low:g}, {high:g}], got "
                    f"{value!r}; a model of that size cannot be built here"
                )
        ratio = self.image_size / self.latent_size
        if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(
                f"FDNConfig: image_size / latent_size must be a power of two >= 1, got "
                f"{self.image_size} / {self.latent_size}"
            )
        if self.latent_size & (self.latent_size - 1):
            raise ValueError(
                f"FDNConfig.latent_size must be a power of two, got {self.latent_size}"
            )
        for name in ("gate_abnormal_codes", "null_code_at_origin"):
            if getattr(self, name) and self.null_code_weight <= 0:
                raise ValueError(
                    f"FDNConfig.{name} needs the null-code prior (null_code_weight > 0): "
                    "without it no code means 'no lesion'"
                )
        if self.gate_to_fixed_point and not self.gate_abnormal_codes:
            raise ValueError(
                "FDNConfig.gate_to_fixed_point repeats the gate: it needs gate_abnormal_codes"
            )
        if self.width <= 0:
            raise ValueError(f"FDNConfig.width must be > 0, got {self.width}")

    @property
    def num_downsamplings(self) -> int:
        """Strided convolutions from the input to the code grid: log2(H / H')."""
        return round(math.log2(self.image_size // self.latent_size))

    def channels(self, base: int) -> int:
        """Filter count `base` of the paper's tables scaled by `width` (at least 4)."""
        return max(4, int(round(base * self.width)))


# Fields added after models were first shipped, with the value that reproduces those models:
# a config file without them describes a model trained before they existed.
LEGACY_VALUES: dict[str, object] = {
    "spade_masked_layout": False,
    "separate_decoder_passes": False,
    "null_code_weight": 0.0,
    "gate_abnormal_codes": False,
    "null_code_at_origin": False,
    "gate_to_fixed_point": False,
}

# Fields that change the codes `FDN.encode` gives with the same weights. An index records
# them beside the weights' checksum, so that it never mixes codes of two encodings.
ENCODING_FIELDS = ("gate_abnormal_codes", "gate_to_fixed_point")


def encoding_settings(config: FDNConfig) -> dict[str, object]:
    """{field: value} of `ENCODING_FIELDS` in ``config``."""
    return {name: getattr(config, name) for name in ENCODING_FIELDS}


_PAPER = FDNConfig()
# CPU presets: same code, narrower, smaller codebooks, a faster learning rate.
_CPU_64 = replace(
    _PAPER,
    image_size=64,
    latent_size=8,
    width=0.25,
    code_dim=32,
    codebook_size=128,
    spade_hidden=16,
    lr=1e-3,
    batch_size=16,
    epochs=20,
)

PRESETS: dict[str, FDNConfig] = {
    # The paper's configurations (4.3.1): λ4 = λ5 = 1e-4 for 4x4/8x8, 5e-4 for 16x16/32x32.
    "fdn-4x4": replace(_PAPER, latent_size=4),
    "fdn-8x8": replace(_PAPER, latent_size=8),
    "fdn-16x16": replace(_PAPER, latent_size=16, lambda_reg=5e-4, lambda_critic=5e-4),
    "fdn-32x32": replace(_PAPER, latent_size=32, lambda_reg=5e-4, lambda_critic=5e-4),
    "cpu-64": _CPU_64,
    # cpu-64 with the null-code prior at the zero vector and gated encoding (issue #13), on
    # the first-release decoder (lesion-softmax layout, one decoder pass): the A/B in
    # benchmarks/results/quality-ablation found it best for S_abnormal. models/cpu-64-null.
    "cpu-64-null": replace(
        _CPU_64,
        spade_masked_layout=False,
        separate_decoder_passes=False,
        null_code_weight=1.0,
        gate_abnormal_codes=True,
        gate_to_fixed_point=True,
        null_code_at_origin=True,
    ),
    "cpu-128": replace(_CPU_64, image_size=128, codebook_size=256),
    # For tests only: 32² input, 4x4 latent, very narrow.
    "tiny": replace(
        _PAPER,
        image_size=32,
        latent_size=4,
        width=0.125,
        code_dim=8,
        codebook_size=16,
        spade_hidden=8,
        lr=1e-3,
        batch_size=4,
        epochs=1,
    ),
}


def parse_overrides(items) -> dict[str, object]:
    """["field=value", ...] -> {field: typed value} for FDNConfig fields (ValueError otherwise).

    Values take the field's type: integers, finite numbers, or true/false for flags.
    """
    kinds = {f.name: f.type for f in fields(FDNConfig)}
    out: dict[str, object] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name, text = name.strip(), text.strip()
        if not sep or name not in kinds:
            raise ValueError(
                f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(kinds))}"
            )
        kind = kinds[name]
        try:
            if kind in (bool, "bool"):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[name] = text.lower() in ("true", "1")
            elif kind in (int, "int"):
                out[name] = int(text)
            else:
                out[name] = float(text)
        except ValueError:
            raise ValueError(f"{item!r}: {text!r} is not a valid {name}") from None
    return out


def resolve_config(preset: str, overrides: Mapping[str, Any] | None = None) -> FDNConfig:
    """The config of `preset` with the fields in `overrides` ({field: typed value}, e.g. from
    `parse_overrides`) set over it; ValueError naming an unknown preset or a bad field."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        return replace(PRESETS[preset], **(overrides or {}))
    except TypeError as exc:  # a field FDNConfig does not have
        raise ValueError(f"{exc}; the fields are those of config.json") from None
