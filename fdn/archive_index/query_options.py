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

from fdn.errors import FdnError
from hashindex import DISTANCES, ENGINES, MODES

ALL_MODES = "all"
MODE_CHOICES = (*MODES, ALL_MODES)


class QueryError(FdnError, ValueError):
    """A query's inputs are invalid: an unknown option value, case or slice, or an unusable
    external case. The message says what was given, what is allowed, and how to fix it."""


class UnknownCaseError(QueryError):
    """The query names a case that is not in the index."""


@dataclass(frozen=True)
class QueryOptions:
    """The search options of a query, checked when made; QueryError names a bad one.

    modes: the modes to run (normal, abnormal, sum), each once, in order. engine: one of
    ENGINES, or None for the index's default for the distance (`with_default_engine`).
    where: a filter on the slice table (`fdn.archive_index.where`), checked for its syntax
    here and against the index's columns when it runs; hits come only from the rows it keeps.
    """

    modes: tuple[str, ...] = ("sum",)
    distance: str = "hamming"
    topq: int = 10
    engine: str | None = None
    nprobe: int | None = None
    normalized_sum: bool = False
    include_same_volume: bool = False
    where: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.modes, tuple) or not self.modes:
            raise QueryError(f"modes must be a tuple of {', '.join(MODES)}; got {self.modes!r}")
        for mode in self.modes:
            if mode not in MODES:
                raise QueryError(f"mode must be one of {', '.join(MODE_CHOICES)}; got {mode!r}")
        if len(set(self.modes)) != len(self.modes):
            raise QueryError(f"modes must not repeat; got {self.modes!r}")
        if self.distance not in DISTANCES:
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
        if self.where is not None:
            from fdn.archive_index.where import parse_where  # it imports QueryError from here

            parse_where(self.where)

    def with_default_engine(self, index) -> QueryOptions:
        """These options with the engine decided: the named one, else ``index``'s default for
        the distance (`SearchableIndex.default_engine`)."""
        if self.engine is not None:
            return self
        return replace(self, engine=index.default_engine(self.distance))


def query_options(
    mode: str | list[str] | tuple[str, ...] = "sum",
    *,
    distance: str = "hamming",
    topq: int = 10,
    engine: str | None = None,
    nprobe: int | None = None,
    normalized_sum: bool = False,
    include_same_volume: bool = False,
    max_topq: int | None = None,
    where: str | None = None,
) -> QueryOptions:
    """`QueryOptions` from loose values (command-line flags, HTTP parameters).

    mode: one of normal, abnormal, sum, all (all three), or a list of modes (repeats dropped).
    max_topq: an upper bound on topq (the service sets one), None for none.
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
    )
    if max_topq is not None and options.topq > max_topq:
        raise QueryError(f"topq must be at most {max_topq}; got {options.topq}")
    return options


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
