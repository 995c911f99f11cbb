"""`--where`: the filter language (hand-written cases, malicious input refused) and filtered
search, exact against a numpy brute force restricted to the rows that pass, sharded and not."""

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fdn.archive_index.queries import query_options, run_slice_query
from fdn.archive_index.retrieval import open_index
from fdn.archive_index.shards import open_sharded, split_index
from fdn.archive_index.where import WhereError, parse_where, where_mask
from fdn_index_cli.main import main

N = 6
COLUMNS = {
    "age": np.array([70, 45, np.nan, 60, 61.5, 30]),
    "sex": np.array(["F", "M", "F", None, "M", "F"], dtype=object),
    "study_date": np.array(
        ["2020-01-31", "2019-05-01", "NaT", "2021-12-24", "2020-02-01", "2018-01-01"],
        "datetime64[D]",
    ),
    "manufacturer": np.array(["GE", "SIEMENS", "GE", "Philips", "", "GE"], dtype=object),
}


def rows(text):
    return np.flatnonzero(where_mask(text, COLUMNS, N)).tolist()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("age >= 60", [0, 3, 4]),
        ('age >= 60 and sex == "F"', [0]),
        ("sex == 'F' or age < 40", [0, 2, 5]),
        ("not sex == 'F'", [1, 3, 4]),  # a missing sex fails ==, so `not` keeps it
        ("sex != 'F'", [1, 4]),  # a missing value fails != too
        ('manufacturer in ["GE", "Philips"]', [0, 2, 3, 5]),
        ('manufacturer not in ["GE"]', [1, 3]),
        ("study_date >= 2020-01-01 and study_date < 2021-01-01", [0, 4]),
        ('study_date == "2018-01-01"', [5]),  # a quoted ISO date against a date column
        ("(age > 50 or sex == 'M') and not (manufacturer == 'GE')", [1, 3, 4]),
        ("AGE > 1", None),  # column names are case-sensitive: an unknown column
        ("age > -1e3", [0, 1, 3, 4, 5]),
        ("age in [45, 30]", [1, 5]),
        ("NOT age < 50 AND sex == 'M'", [4]),  # keywords in any case
    ],
)
def test_filters_select_the_rows_by_hand(text, expected):
    if expected is None:
        with pytest.raises(WhereError, match="no column 'AGE'"):
            rows(text)
        return
    assert rows(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("__import__('os').system('ls')", "unexpected '.'"),
        ("__import__('os')", "expected a comparison"),
        ("age >= 60; import os", "unexpected ';'"),
        ("age.__class__ == 1", "unexpected '.'"),
        ("sex == F", "expected a number"),  # an unquoted word is no literal
        ("age >= ", "expected a number"),
        ("age >= 60 and", "expected a column name"),
        ("(age >= 60", "expected ')'"),
        ("age >= 60)", "expected 'and', 'or' or the end"),
        ("sex == 'F", "never closed"),
        ("age = 60", "unexpected '='"),
        ("", "empty"),
        ("study_date > 2020-13-01", "not a date"),
        ("x" * 3000, "at most"),
        ("(" * 100 + "age > 1" + ")" * 100, "nested"),
        ("not " * 100 + "age > 1", "nested"),
        ("age in []", "expected a number"),
        ("lambda: 1", "unexpected ':'"),
        ("eval('1') == 1", "expected a comparison"),
    ],
)
def test_bad_and_malicious_filters_are_refused(text, message):
    with pytest.raises(WhereError, match=re.escape(message)):
        where_mask(text, COLUMNS, N)


@pytest.mark.parametrize(
    "text, column",
    [
        ("age == 'old'", "age"),
        ("sex > 'F'", "sex"),
        ("sex == 1", "sex"),
        ("study_date > 5", "study_date"),
        ("manufacturer in ['GE', 3]", "manufacturer"),
        ("weight > 80", "weight"),
    ],
)
def test_type_mismatches_and_unknown_columns_name_the_column(text, column):
    with pytest.raises(WhereError, match=f"'{column}'"):
        where_mask(text, COLUMNS, N)


def test_the_syntax_is_checked_with_the_options():
    with pytest.raises(WhereError):
        query_options("sum", where="age >>= 3")
    assert query_options("sum", where="age > 3").where == "age > 3"
    assert parse_where("a == 1") == parse_where("a==1")


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, built_index):
    folder = tmp_path_factory.mktemp("where")
    shutil.copytree(built_index, folder / "index")
    split_index(folder / "index", folder / "shards", 2)
    return open_index(folder / "index"), open_sharded(folder / "shards")


def _brute(index, row, mode, distance, passing, exclude, topq):
    import tests.hashindex.hashindex_reference as ref

    cn, ca = (np.load(index.index_dir / f"codebook_{b}.npy") for b in ("normal", "abnormal"))
    dist = ref.all_distances(
        index.hash_index, cn, ca, index.codes_normal, index.codes_abnormal,
        index.codes_normal[row], index.codes_abnormal[row], mode, distance,
    )  # fmt: skip
    keep = np.flatnonzero(passing)
    volumes = np.asarray(index.table["volume"], np.int64)
    return [
        (d, int(keep[r]))
        for d, r, _ in ref.volume_topq(dist[keep], volumes[keep], topq, exclude=exclude)
    ]


@pytest.mark.parametrize(
    "where",
    [
        "lesion_area > 0",
        "slice >= 3 and slice < 9",
        "not (lesion_area > 0) or slice == 5",
        "case in ['SYN_000', 'SYN_003']",
        "slice > 10000",  # nothing passes
    ],
)
def test_filtered_search_is_exact_sharded_and_unsharded(indexes, where):
    full, sharded = indexes
    import tests.hashindex.hashindex_reference as ref

    passing = full.where_rows(where)
    volumes = np.asarray(full.table["volume"], np.int64)
    for mode in ("sum", "abnormal"):
        candidates = passing & ref.lesion_candidates(full.index_dir, mode, full.ntotal)
        for distance in ("hamming", "euclidean"):
            for case in full.cases[:2]:
                slice_index = full.default_slice(case)
                row = full.row_of(case, slice_index)
                brute = _brute(full, row, mode, distance, candidates, int(volumes[row]), 3)
                for index in (full, sharded):
                    options = query_options(mode, distance=distance, topq=3, where=where)
                    result = run_slice_query(index, case, slice_index, options)
                    assert result.rows_passing == int(passing.sum())
                    hits = result.hits(mode)
                    assert all(passing[h.row] for h in hits)
                    np.testing.assert_allclose(
                        [h.distance for h in hits], [d for d, _ in brute], atol=1e-7
                    )
                    if distance == "hamming":
                        assert [h.row for h in hits] == [r for _, r in brute]


def test_cli_query_where_echoes_the_filter_and_refuses_unknown_columns(indexes):
    full, _ = indexes
    where = "lesion_area > 0"
    args = ["query", "--index", str(full.index_dir), "--where", where, "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["where"] == where
    assert out["rows_passing"] == int(full.where_rows(where).sum())
    bad = CliRunner().invoke(main, ["query", "--index", str(full.index_dir), "--where", "age > 1"])
    assert bad.exit_code != 0 and "'age'" in bad.output
