"""`fdn-index remove`: a removed case never comes back (1,000 random queries, sharded and
unsharded), is refused as a query, and compaction (or a later build) leaves no trace of it."""

import hashlib
import hmac
import json
import shutil
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from fdn.archive_index import removal
from fdn.archive_index.queries import UnknownCaseError, query_options, run_slice_query
from fdn.archive_index.retrieval import open_index
from fdn.archive_index.shards import open_sharded, split_index
from fdn.archive_index.tombstones import TOMBSTONES, read_tombstones
from fdn.errors import IndexDirError
from fdn_index_cli.main import main

ENGINES = {"hamming": ("lut", "fastscan", "torch", "numpy", "faiss-flat")}
ENGINES["euclidean"] = ENGINES["angular"] = ("lut", "fastscan", "torch", "numpy")


@pytest.fixture
def index_copy(tmp_path, built_index):
    shutil.copytree(built_index, tmp_path / "index")
    return tmp_path / "index"


def _random_queries(index, removed: str, n: int, seed: int):
    """n random queries (case, slice, options) of the cases not removed."""
    rng = np.random.default_rng(seed)
    cases = [c for c in index.cases if c != removed]
    for _ in range(n):
        case = cases[rng.integers(len(cases))]
        slices = index.slice_range(case)
        distance = ("hamming", "euclidean", "angular")[rng.integers(3)]
        options = query_options(
            ("normal", "abnormal", "sum")[rng.integers(3)],
            distance=distance,
            topq=int(rng.integers(1, len(index.cases) + 1)),
            engine=ENGINES[distance][rng.integers(len(ENGINES[distance]))],
            include_same_volume=bool(rng.integers(2)),
        )
        yield case, int(slices[rng.integers(len(slices))]), options


def _check_never_returned(index, removed: str, seed: int) -> None:
    for case, slice_index, options in _random_queries(index, removed, 1000, seed):
        (mode,) = options.modes
        hits = run_slice_query(index, case, slice_index, options).hits(mode)
        assert removed not in {h.case for h in hits}


def test_a_removed_case_never_comes_back(index_copy, tmp_path):
    shards = tmp_path / "shards"
    split_index(index_copy, shards, 2)
    full = open_index(index_copy)
    sharded = open_sharded(shards)  # opened before the removal: it must honour it at once
    removed = full.cases[1]
    result = CliRunner().invoke(main, ["remove", "--index", str(index_copy), removed, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["indexes"][0]["removed"] == [removed]
    result = CliRunner().invoke(main, ["remove", "--index", str(shards), removed])
    assert result.exit_code == 0, result.output
    owner = json.loads((shards / "shards.json").read_text())["shards"]
    holder = next(s["path"] for s in owner if removed in s["cases"])
    assert (shards / holder / TOMBSTONES).is_file()
    assert all(not (shards / s["path"] / TOMBSTONES).exists() for s in owner if s["path"] != holder)
    assert removed in full.removed_cases() and removed in sharded.removed_cases()
    for seed, index in ((1, full), (2, sharded)):
        _check_never_returned(index, removed, seed)
        with pytest.raises(UnknownCaseError, match="was removed"):
            run_slice_query(index, removed, None, query_options("sum"))


def test_masked_hits_equal_the_unmasked_ranking_without_the_case(index_copy):
    """Q = every volume: the full ranking with the removed case dropped is the exact answer."""
    index = open_index(index_copy)
    removed = index.cases[0]
    before = {}
    queries = list(_random_queries(index, removed, 60, seed=3))
    for case, slice_index, options in queries:
        (mode,) = options.modes
        every = query_options(
            mode, distance=options.distance, topq=len(index.cases), engine="lut",
            include_same_volume=options.include_same_volume,
        )  # fmt: skip
        hits = run_slice_query(index, case, slice_index, every).hits(mode)
        before[case, slice_index, mode, options.distance, options.include_same_volume] = [
            (h.case, h.row, h.distance) for h in hits if h.case != removed
        ]
    removal.remove_cases(index_copy, [removed])
    for case, slice_index, options in queries:
        (mode,) = options.modes
        hits = run_slice_query(index, case, slice_index, options).hits(mode)
        want = before[case, slice_index, mode, options.distance, options.include_same_volume]
        got = [(h.case, h.row, h.distance) for h in hits]
        want = want[: options.topq]
        assert len(got) == len(want)
        np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], atol=1e-7)
        if options.distance == "hamming":
            assert got == want


def test_an_unknown_case_is_refused_and_nothing_is_removed(index_copy):
    keep = open_index(index_copy).cases[0]
    result = CliRunner().invoke(main, ["remove", "--index", str(index_copy), keep, "NO_SUCH"])
    assert result.exit_code != 0
    assert "NO_SUCH" in result.output
    assert not (index_copy / TOMBSTONES).exists()
    result = CliRunner().invoke(main, ["remove", "--index", str(index_copy)])
    assert result.exit_code != 0 and "CASE" in result.output
    result = CliRunner().invoke(main, ["remove", "--help"])
    assert result.exit_code == 0 and "--compact" in result.output


def test_a_removed_case_as_a_cli_query_is_refused(index_copy):
    removed = open_index(index_copy).cases[2]
    removal.remove_cases(index_copy, [removed])
    result = CliRunner().invoke(main, ["query", "--index", str(index_copy), "--case", removed])
    assert result.exit_code != 0
    assert "was removed" in result.output


def _traces(folder, case: str) -> list[str]:
    needle = case.encode()
    return [
        str(p.relative_to(folder))
        for p in sorted(folder.rglob("*"))
        if (p.is_file() and needle in p.read_bytes()) or case in p.name
    ]


def test_compaction_leaves_no_trace_of_the_case(index_copy):
    index = open_index(index_copy)
    removed, n_before = index.cases[1], index.ntotal
    rows = len(index.slice_range(removed))
    assert _traces(index_copy, removed)  # the check can see a case
    result = CliRunner().invoke(
        main, ["remove", "--index", str(index_copy), removed, "--compact", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["indexes"][0]["journal_entries_deleted"] == 1
    assert _traces(index_copy, removed) == []
    after = open_index(index_copy)
    assert removed not in after.cases and after.ntotal == n_before - rows
    assert after.removed_cases() == frozenset()
    assert len(read_tombstones(index_copy)) == 1  # a digest, not the id
    case = after.cases[0]
    assert run_slice_query(after, case, None, query_options("sum")).hits("sum")
    # removing it again says so; compacting again changes nothing
    report = removal.remove_cases(index_copy, [removed], compact=True)
    assert report["indexes"][0]["removed_before"] == [removed]


def test_a_compaction_killed_before_its_swap_is_finished_by_the_next(index_copy, monkeypatch):
    removed = open_index(index_copy).cases[3]
    removal.remove_cases(index_copy, [removed])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    import fdn.archive_index.assemble as assemble

    monkeypatch.setattr(assemble, "assemble_index", killed)
    with pytest.raises(KeyboardInterrupt):
        removal.remove_cases(index_copy, [], compact=True)
    index = open_index(index_copy)  # the old index, the case still hidden
    assert removed in index.cases and removed in index.removed_cases()
    monkeypatch.undo()
    removal.remove_cases(index_copy, [], compact=True)
    assert _traces(index_copy, removed) == []


def test_a_later_build_compacts_and_never_indexes_the_case_again(
    index_copy, tiny_archive, model_dir
):
    from fdn.archive_index.build import build_index

    removed = open_index(index_copy).cases[0]
    removal.remove_cases(index_copy, [removed])
    build_index(tiny_archive, model_dir, index_copy)
    assert removed not in open_index(index_copy).cases
    assert _traces(index_copy, removed) == []


def test_shards_refuse_compaction_and_unknown_cases(index_copy, tmp_path):
    shards = tmp_path / "shards"
    split_index(index_copy, shards, 2)
    with pytest.raises(IndexDirError, match="NOPE"):
        removal.remove_cases(shards, ["NOPE"])
    with pytest.raises(IndexDirError, match="split it again"):
        removal.remove_cases(shards, [], compact=True)


def test_shards_split_after_a_removal_leave_the_case_out(index_copy, tmp_path):
    removed = open_index(index_copy).cases[0]
    removal.remove_cases(index_copy, [removed])
    listing = split_index(index_copy, tmp_path / "shards", 2)
    assert all(removed not in s["cases"] for s in listing["shards"])
    assert _traces(tmp_path / "shards", removed) == []


# ------------------------------------------------- removal digests keyed (issue 25)


def _unkeyed(case: str) -> str:
    """The version-1 digest: sha256 over a fixed prefix and the id, computable by anyone."""
    return hashlib.sha256(b"fdn-index removed case\0" + case.encode()).hexdigest()


def test_removed_json_holds_only_keyed_digests(index_copy, tmp_path):
    case = open_index(index_copy).cases[2]
    assert removal.remove_cases(index_copy, [case])["indexes"][0]["removed"] == [case]
    data = json.loads((index_copy / TOMBSTONES).read_text())
    key_file = index_copy / ".removal-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text().strip())
    assert len(key) == 32
    # nobody without the key can test a guessed id: no plain digest of it is in the file
    text = (index_copy / TOMBSTONES).read_text()
    for plain in (_unkeyed(case), hashlib.sha256(case.encode()).hexdigest()):
        assert plain not in text
    keyed = hmac.new(key, _unkeyed(case).encode(), hashlib.sha256).hexdigest()
    assert data["removed"] == [keyed] and data["format_version"] == 2
    assert open_index(index_copy).removed_cases() == frozenset({case})
    # the key stays in the folder it was made in: shards split from it and their listing
    # carry neither the key nor the removed case
    shards = tmp_path / "shards"
    split_index(index_copy, shards, 2)
    assert not list(shards.rglob(".removal-key"))
    assert key.hex() not in (shards / "shards.json").read_text()
    assert case not in open_sharded(shards).cases


def test_a_version_1_file_is_honoured_then_rewritten_keyed(index_copy):
    index = open_index(index_copy)
    old, new = index.cases[1], index.cases[3]
    (index_copy / TOMBSTONES).write_text(
        json.dumps({"format": "fdn-index-removed", "format_version": 1, "removed": [_unkeyed(old)]})
    )
    assert open_index(index_copy).removed_cases() == frozenset({old})
    removal.remove_cases(index_copy, [new])
    text = (index_copy / TOMBSTONES).read_text()
    assert _unkeyed(old) not in text and _unkeyed(new) not in text
    assert len(json.loads(text)["removed"]) == 2
    assert open_index(index_copy).removed_cases() == frozenset({old, new})
    again = removal.remove_cases(index_copy, [old])["indexes"][0]
    assert again["removed_before"] == [old]


def test_a_keyed_file_without_its_key_refuses_every_query(index_copy):
    index = open_index(index_copy)
    removal.remove_cases(index_copy, [index.cases[1]])
    (index_copy / ".removal-key").unlink()
    with pytest.raises(IndexDirError, match=r"\.removal-key, which is missing"):
        open_index(index_copy).removed_cases()
    result = CliRunner().invoke(
        main, ["query", "--index", str(index_copy), "--case", index.cases[0], "--json"]
    )
    assert result.exit_code != 0 and ".removal-key" in result.output
