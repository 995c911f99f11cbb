"""The options of a query, checked once: the one way into a search of an index.

    options = query_options("all", distance="euclidean", topq=6)     # loose values: CLI, HTTP
    options = QueryOptions(modes=("abnormal",), engine="lut")         # the same checks
    run_slice_query(index, "SYN_003", 30, options)

A `QueryOptions` is valid by construction (`__post_init__` checks every field), so nothing
further down checks it again. To add an option: a field here (with its check in
`__post_init__`), its keyword in `query_options`, and where it acts (`ArchiveIndex.search`);
the CLI flag, the HTTP parameter (`fdn.service.service.parse_options`) and the JSON schema
(`QueryResult.to_dict`) name it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fdn.errors import QueryError
from hashindex import DISTANCES, ENGINES, MODES
from hashindex.registry import REGISTRY, able

if TYPE_CHECKING:
    from fdn.archive_index.region import RegionSpec

ALL_MODES = "all"
MODE_CHOICES = (*MODES, ALL_MODES)

# The distance a mode runs with when the query names none: the best of the quality benchmark
# for that mode, then the next best where a named engine lacks it (share of the Dice oracle;
# benchmarks/results/quality-*, and issue 28's archive from another generator). Lesions:
# D_A 65 % (unseen anatomy 56 %), D_H 64 % (41 %), D_E 59 % (54 %): D_A also keeps slices
# with no lesion code away (their abnormal grid is the null code, of norm ~0), where D_H
# returned the first slice of a volume, almost without brain. Anatomy: D_E 87.8 %, D_A 87.9 %
# (89 / 89 % unseen), D_E pruned by fastscan. The sum: D_E 85 %, D_H 84 %, D_A 82 %.
BEST_DISTANCES = {
    "normal": ("euclidean", "angular", "hamming"),
    "abnormal": ("angular", "euclidean", "hamming"),
    "sum": ("euclidean", "hamming", "angular"),
}


@dataclass(frozen=True)
class QueryOptions:
    """The search options of a query, checked when made; QueryError names a bad one.

    modes: the modes to run (normal, abnormal, sum), each once, in order. distance: one of
    DISTANCES, or None for each mode's best (`BEST_DISTANCES`). engine: one of ENGINES, or None
    for the index's default for the distance. `for_mode` decides both for one mode.
    where: a filter on the slice table (`fdn.archive_index.where`), checked for its syntax
    here and against the index's columns when it runs; hits come only from the rows it keeps.
    region: a `RegionSpec` (a box or a mask file on the query slice), resolved to grid
    positions when the query's slice is known (`fdn.archive_index.region`); only those
    positions count in the distance, and only engines that take a position mask run it.
    explain: each hit carries the per-position contributions to its distance
    (`hashindex.explain`).
    """

    modes: tuple[str, ...] = ("sum",)
    distance: str | None = None
    topq: int = 10
    engine: str | None = None
    nprobe: int | None = None
    normalized_sum: bool = False
    include_same_volume: bool = False
    where: str | None = None
    region: RegionSpec | None = None
    explain: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.modes, tuple) or not self.modes:
            raise QueryError(f"modes must be a tuple of {', '.join(MODES)}; got {self.modes!r}")
        for mode in self.modes:
            if mode not in MODES:
                raise QueryError(f"mode must be one of {', '.join(MODE_CHOICES)}; got {mode!r}")
        if len(set(self.modes)) != len(self.modes):
            raise QueryError(f"modes must not repeat; got {self.modes!r}")
        if self.distance is not None and self.distance not in DISTANCES:
            raise QueryError(
                f"distance must be one of {', '.join(DISTANCES)}; got {self.distance!r}"
            )
        if self.engine is not None and self.engine not in ENGINES:
            raise QueryError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        topq = as_int("topq", self.topq)
        if topq < 1:
            raise QueryError(f"topq must be at least 1; got {topq}")
        object.__setattr__(self, "topq", topq)
        if self.nprobe is not None:
            nprobe = as_int("nprobe", self.nprobe)
            if nprobe < 1:
                raise QueryError(f"nprobe must be at least 1; got {nprobe}")
            object.__setattr__(self, "nprobe", nprobe)
        object.__setattr__(self, "normalized_sum", bool(self.normalized_sum))
        object.__setattr__(self, "include_same_volume", bool(self.include_same_volume))
        object.__setattr__(self, "explain", bool(self.explain))
        if self.region is not None and self.engine is not None:
            if not REGISTRY[self.engine].supports_position_mask:
                raise QueryError(
                    f"engine {self.engine} cannot restrict the distance to a region; use "
                    f"{' or '.join(able('supports_position_mask'))}, or name no engine"
                )
        if self.where is not None:
            from fdn.archive_index.where import parse_where  # the slice table: not at CLI start

            parse_where(self.where)

    def distance_for(self, mode: str) -> str:
        """The distance ``mode`` runs with: the named one, else the mode's best that the named
        engine (if any) supports."""
        if self.distance is not None:
            return self.distance
        able = REGISTRY[self.engine].distances if self.engine is not None else DISTANCES
        return next(d for d in BEST_DISTANCES[mode] if d in able)

    def for_mode(self, mode: str, index) -> QueryOptions:
        """These options for ``mode`` alone, its distance and engine decided: the named
        engine, else ``index``'s default for the distance (`SearchableIndex.default_engine`)."""
        distance = self.distance_for(mode)
        engine = self.engine
        if engine is None:
            engine = index.default_engine(distance, position_mask=self.region is not None)
        return replace(self, modes=(mode,), distance=distance, engine=engine)


def query_options(
    mode: str | list[str] | tuple[str, ...] = "sum",
    *,
    distance: str | None = None,
    topq: int = 10,
    engine: str | None = None,
    nprobe: int | None = None,
    normalized_sum: bool = False,
    include_same_volume: bool = False,
    max_topq: int | None = None,
    where: str | None = None,
    region: str | None = None,
    region_mask: str | None = None,
    explain: bool = False,
) -> QueryOptions:
    """`QueryOptions` from loose values (command-line flags, HTTP parameters).

    mode: one of normal, abnormal, sum, all (all three), or a list of modes (repeats dropped).
    max_topq: an upper bound on topq (the service sets one), None for none.
    region: a box "x0,y0,x1,y1" in voxels of the query slice; region_mask: a mask file's path
    (at most one of the two).
    """
    modes = [mode] if isinstance(mode, str) else list(mode)
    if not modes:
        raise QueryError(f"mode must be one of {', '.join(MODE_CHOICES)}; got none")
    expanded: list[str] = []
    for m in modes:
        if m not in MODE_CHOICES:
            raise QueryError(f"mode must be one of {', '.join(MODE_CHOICES)}; got {m!r}")
        for one in MODES if m == ALL_MODES else (m,):
            if one not in expanded:
                expanded.append(one)
    options = QueryOptions(
        modes=tuple(expanded),
        distance=distance,
        topq=topq,
        engine=engine,
        nprobe=nprobe,
        normalized_sum=normalized_sum,
        include_same_volume=include_same_volume,
        where=where,
        region=_region_spec(region, region_mask),
        explain=explain,
    )
    if max_topq is not None and options.topq > max_topq:
        raise QueryError(f"topq must be at most {max_topq}; got {options.topq}")
    return options


def _region_spec(box: str | None, mask: str | None) -> RegionSpec | None:
    from fdn.archive_index.region import RegionSpec, parse_box  # only a region query needs it

    if box is None and mask is None:
        return None
    if box is not None and mask is not None:
        raise QueryError("give the region as a box or as a mask file, not both")
    return RegionSpec(box=None if box is None else parse_box(box), mask=mask)


def as_int(name: str, value) -> int:
    """``value`` as an int (a whole number, or its text); QueryError otherwise."""
    if isinstance(value, bool):
        raise QueryError(f"{name} must be an integer; got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be an integer; got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise QueryError(f"{name} must be an integer; got {value!r}")
    return number
