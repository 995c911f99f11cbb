"""Lesion families: the kinds of lesion a synthetic archive can hold.

The shipped models were trained on one family, `glioma` (one ring-enhancing tumour with a
necrotic core, peritumoral edema and mass effect, in the white matter of a hemisphere). A model
that retrieves "lesions like this one" must also hold on lesions it never saw, so the generator
varies the lesion the way clinical archives do: size, number, place, enhancement, mass effect
and shape. Each family is a set of overrides of `SynthConfig`'s lesion knobs plus where the
lesion grows and whether it enhances; the labels stay BraTS's (1 necrosis / non-enhancing
tumour, 2 edema, 4 enhancing tumour), so every archive is scored the same way.

A diseased case of an archive made with several families draws its family from its own random
stream (`family_rng`), so an archive of the default family alone is byte-identical to one made
before families existed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fdn.synth.config import SynthConfig

# where a lesion's centre may lie (`fdn.synth.lesion.choose_lesion`)
PLACEMENTS = ("white-matter", "cortical", "deep")


@dataclass(frozen=True)
class LesionFamily:
    """One kind of lesion. ``None`` keeps the `SynthConfig` value."""

    name: str
    description: str
    lesion_radius_mm: tuple[float, float] | None = None
    edema_factor: tuple[float, float] | None = None
    core_fraction: tuple[float, float] | None = None
    mass_effect: tuple[float, float] | None = None  # max push / radius; (0, 0): none
    shape_irregularity: float | None = None
    count: tuple[int, int] = (1, 1)  # lesions per case, inclusive
    placement: str = "white-matter"
    enhancing: bool = True  # False: the tumour is one non-enhancing compartment (label 1)

    def config(self, base: SynthConfig) -> SynthConfig:
        """`base` with this family's lesion knobs."""
        knobs = (
            "lesion_radius_mm",
            "edema_factor",
            "core_fraction",
            "mass_effect",
            "shape_irregularity",
        )
        return replace(base, **{k: getattr(self, k) for k in knobs if getattr(self, k) is not None})


FAMILIES: dict[str, LesionFamily] = {
    f.name: f
    for f in (
        LesionFamily(
            "glioma",
            "one ring-enhancing tumour, necrotic core, edema, mass effect, in the white matter "
            "(what the shipped models were trained on)",
        ),
        LesionFamily(
            "non-enhancing",
            "one tumour without enhancement or necrosis (T2/FLAIR bright, T1 dark), little edema",
            edema_factor=(1.1, 1.4),
            mass_effect=(0.1, 0.3),
            enhancing=False,
        ),
        LesionFamily(
            "multifocal",
            "two to four small enhancing tumours in the white matter",
            lesion_radius_mm=(4.0, 9.0),
            count=(2, 4),
            mass_effect=(0.1, 0.3),
        ),
        LesionFamily(
            "small",
            "one small enhancing tumour, 3-7 mm",
            lesion_radius_mm=(3.0, 7.0),
            edema_factor=(1.2, 1.6),
            mass_effect=(0.0, 0.15),
        ),
        LesionFamily(
            "large",
            "one large tumour, 22-32 mm, deep in the hemisphere",
            lesion_radius_mm=(22.0, 32.0),
            edema_factor=(1.15, 1.5),
            placement="deep",
        ),
        LesionFamily(
            "cortical",
            "one tumour at the brain's surface, in or under the cortex",
            lesion_radius_mm=(5.0, 14.0),
            mass_effect=(0.1, 0.3),
            placement="cortical",
        ),
        LesionFamily(
            "deep",
            "one tumour deep in the white matter, near the ventricles",
            lesion_radius_mm=(6.0, 14.0),
            placement="deep",
        ),
        LesionFamily(
            "no-mass-effect",
            "one enhancing tumour that pushes no tissue aside",
            mass_effect=(0.0, 0.0),
        ),
        LesionFamily(
            "irregular",
            "one lobulated tumour with finger-like edema",
            shape_irregularity=0.65,
        ),
    )
}
DEFAULT_FAMILIES = ("glioma",)


def parse_families(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The family names of ``names`` (a comma-separated text or a sequence), checked, in order,
    without repeats; ValueError naming an unknown one and the known ones."""
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if name not in FAMILIES:
            raise ValueError(f"unknown lesion family {raw!r}; choose from {', '.join(FAMILIES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no lesion family given; choose from {', '.join(FAMILIES)}")
    return tuple(out)


def family_rng(seed: int, case_index: int) -> np.random.Generator:
    """The random stream a case draws its family (and nothing else) from: apart from the
    stream that draws its anatomy and lesion, which stays as it was before families."""
    return np.random.default_rng([seed, case_index, 0xFA])


def case_family(seed: int, case_index: int, families: tuple[str, ...]) -> LesionFamily:
    """The family of diseased case ``case_index``: uniform over ``families``."""
    if len(families) == 1:
        return FAMILIES[families[0]]
    return FAMILIES[families[int(family_rng(seed, case_index).integers(len(families)))]]
