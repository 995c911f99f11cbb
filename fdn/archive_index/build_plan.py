"""An index's build plan (`layout.PLAN`, build_plan.json), read and checked: the cases of the
index in row order, their sources, the cases skipped, and the model they are encoded with.
The build writes it (`fdn.archive_index.build`); removal and shards read it."""

from __future__ import annotations

import json
from pathlib import Path

from fdn.errors import IndexDirError


def read_plan(path: Path) -> dict:
    """build_plan.json, checked enough that the build can rely on it."""
    fix = f"Delete {path.parent} and build again (or use a new --index)."
    try:
        plan = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise IndexDirError(f"{path}: corrupt ({str(exc)[:80]}). {fix}") from None
    skipped = plan.get("skipped", []) if isinstance(plan, dict) else None
    ok = (
        isinstance(plan, dict)
        and isinstance(plan.get("cases"), list)
        and all(isinstance(c, str) for c in plan["cases"])
        and isinstance(plan.get("sources"), dict)
        and all(c in plan["sources"] for c in plan["cases"])
        and isinstance(skipped, list)
        and all(isinstance(e, dict) and isinstance(e.get("case"), str) for e in skipped)
        and isinstance(plan.get("model_checksum"), str)
        and isinstance(plan.get("encoding", {}), dict)
    )
    if not ok:
        raise IndexDirError(f"{path}: not a build plan of this fdn-index. {fix}")
    roots = plan.get("archive_roots")
    if not (isinstance(roots, list) and all(isinstance(r, str) for r in roots)):
        plan["archive_roots"] = []
    return plan
