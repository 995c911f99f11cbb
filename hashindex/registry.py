"""The one registry of search engines: which exist, and which of them answers what.

`REGISTRY` maps a name to its engine class, in the manner of pynndescent's `named_distances`;
`ENGINES` is its names, in the order users see them. Every choice of an engine is a lookup
here: by name (`engine_class`), the default for a distance (`default_engine`), those an index
can run (`available_engines`). `check_engine` refuses options an engine cannot answer and names
the engines that can, which is why it lives beside the registry and not in `Engine`.

Adding an engine: its class (in `hashindex.engines`, or a module of its own such as
`hashindex.faiss_engines`) and one line in `REGISTRY` (docs/engines.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hashindex.distances import DISTANCES
from hashindex.engine_base import Engine
from hashindex.engines import FastScanEngine, LutEngine, NumpyEngine, TorchEngine
from hashindex.faiss_engines import FaissFlatEngine, FaissIvfEngine

if TYPE_CHECKING:
    from hashindex.state import IndexState

# The engines by name, in the order users see them. Adding an engine: its class, and a line here.
REGISTRY: dict[str, type[Engine]] = {
    engine.name: engine
    for engine in (
        LutEngine,
        FastScanEngine,
        TorchEngine,
        FaissFlatEngine,
        FaissIvfEngine,
        NumpyEngine,
    )
}
ENGINES = tuple(REGISTRY)


def engine_class(name) -> type[Engine]:
    """The engine registered as ``name``; ValueError naming the choices otherwise."""
    found = REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"engine must be one of {tuple(REGISTRY)}, got {name!r}")
    return found


def able(capability: str) -> list[str]:
    """The names of the engines whose class attribute ``capability`` is true."""
    return [name for name, engine in REGISTRY.items() if getattr(engine, capability)]


def available_engines(index: IndexState) -> tuple[str, ...]:
    """The names of the engines ``index`` can search with (`Engine.available`). Loads nothing."""
    return tuple(name for name, engine in REGISTRY.items() if engine.available(index))


def default_engine(distance: str, index: IndexState, position_mask: bool = False) -> str:
    """The engine a query of ``distance`` runs on when it names none: of the engines that may
    answer it by default on ``index`` and this CPU (`Engine.is_default_for`) and (with
    ``position_mask``) answer a region query exactly, the one of highest `Engine.default_rank`.
    Loads nothing."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    candidates = [
        engine
        for engine in REGISTRY.values()
        if engine.is_default_for(distance, index)
        and (engine.supports_position_mask or not position_mask)
    ]
    return max(candidates, key=lambda engine: engine.default_rank).name


def _either(name: str, values) -> str:
    return " or ".join(f"{name}={v!r}" for v in values)


def check_engine(
    engine: Engine,
    mode: str,
    distance: str,
    normalized_sum: bool,
    nprobe: int | None,
    row_mask: bool = False,
    position_mask: bool = False,
) -> None:
    """ValueError, naming the fix, unless ``engine`` can answer these options on its index.

    ``mode`` and ``distance`` are valid names (checked by the caller); ``row_mask``: the query
    is restricted to some rows (`Query.allowed_rows`); ``position_mask``: to some grid positions
    (`Query.positions`). The engine's class attributes are applied here, then its hooks
    (`Engine.check_index`, `Engine.check_nprobe`)."""
    name = engine.name
    if mode not in engine.modes:
        raise ValueError(f"engine {name!r} supports only {_either('mode', engine.modes)}")
    if distance not in engine.distances:
        raise ValueError(
            f"engine {name!r} supports only {_either('distance', engine.distances)}; use "
            f"engine='lut' for {distance!r}"
        )
    if normalized_sum and mode == "sum" and not engine.normalized_sum:
        raise ValueError(
            f"normalized_sum needs {_either('engine', able('normalized_sum'))} "
            f"({engine.no_normalized_sum})"
        )
    if row_mask and not engine.supports_row_mask:
        raise ValueError(
            f"engine {name!r} cannot restrict a search to some rows exactly (a filter or removed "
            f"cases); use {_either('engine', able('supports_row_mask'))}"
        )
    if position_mask and not engine.supports_position_mask:
        raise ValueError(
            f"engine {name!r} cannot restrict the distance to a region's grid positions; use "
            f"{_either('engine', able('supports_position_mask'))} (or name no engine)"
        )
    engine.check_index(mode)
    if nprobe is not None:
        if not engine.takes_nprobe:
            raise ValueError(
                f"nprobe (lists probed) applies only to {_either('engine', able('takes_nprobe'))}"
                f"; engine {name!r} scans every row, so leave nprobe out"
            )
        engine.check_nprobe(nprobe)
