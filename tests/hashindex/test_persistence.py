"""Round trip through the index directory, and refusal of corrupt or mismatched files."""

import hashlib
import io
import json
import shutil

import faiss
import numpy as np
import pytest

from hashindex import HashIndex, IndexFormatError, index_files
from hashindex.checked_files import sum64
from hashindex.files import ARRAY_FILES
from tests.hashindex.hashindex_reference import (
    all_distances,
    make_codebook,
    make_grids,
    volume_topq,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(21)
    cn = make_codebook(rng, 20, 4, n_zero=6, n_tiny=2)
    ca = make_codebook(rng, 12, 3, n_zero=4)
    gn = make_grids(rng, 40, 20, 2, 3, np.arange(12, 20))
    ga = make_grids(rng, 40, 12, 2, 3, np.arange(8, 12))
    vol = np.repeat(np.arange(8), 5).astype(np.int64)
    index = HashIndex.build(cn, ca, ivf_nlist=3)
    index.add(gn, ga, vol)
    d = tmp_path_factory.mktemp("idx")
    index.write(d)
    return index, d, gn, ga, vol, cn


def test_files_written(written):
    _, d, *_ = written
    names = {p.name for p in d.iterdir()}
    assert {
        "codebook_normal.npy",
        "codebook_abnormal.npy",
        "bits_normal.npz",
        "bits_abnormal.npz",
        "hashindex.json",
        "faiss_normal.index",
        "faiss_abnormal.index",
        "faiss_sum.index",
        "faiss_ivf_normal.index",
        "faiss_ivf_abnormal.index",
        "faiss_ivf_sum.index",
        *ARRAY_FILES,
    } <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left behind


def test_codebook_is_stored_rounded(written):
    _, d, _, _, _, cn = written
    stored = np.load(d / "codebook_normal.npy")
    assert stored.dtype == np.float32
    tiny = np.linalg.norm(cn, axis=1) < 1e-5
    assert tiny.sum() == 8 and np.all(stored[tiny] == 0)
    np.testing.assert_array_equal(stored[~tiny], cn[~tiny])


def test_round_trip_gives_identical_results(written):
    index, d, gn, ga, vol, _ = written
    again = HashIndex.read(d)
    assert again.ntotal == index.ntotal and again.report == json.loads(json.dumps(index.report))
    for engine, dist in [
        ("lut", "hamming"),
        ("lut", "euclidean"),
        ("numpy", "angular"),
        ("faiss-flat", "hamming"),
        ("faiss-ivf", "hamming"),
    ]:
        for norm in (False, True) if engine in ("lut", "numpy") else (False,):
            a = index.search_volumes(
                gn[:6],
                ga[:6],
                4,
                distance=dist,
                engine=engine,
                normalized_sum=norm,
                exclude_volumes=vol[:6],
            )
            b = again.search_volumes(
                gn[:6],
                ga[:6],
                4,
                distance=dist,
                engine=engine,
                normalized_sum=norm,
                exclude_volumes=vol[:6],
            )
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


def _broken_copy(d, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(d, target)
    return target


def _replace(t, name, data: bytes):
    """Put `data` in place of file `name` and record its checksum, as a consistent (but wrong)
    writer would: the structural checks behind the checksums must still catch it."""
    (t / name).write_bytes(data)
    meta = json.loads((t / "hashindex.json").read_text())
    meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (t / "hashindex.json").write_text(json.dumps(meta))


def _edit_meta(t, edit):
    meta = json.loads((t / "hashindex.json").read_text())
    meta = edit(meta) or meta
    (t / "hashindex.json").write_text(json.dumps(meta))


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _first_faiss_search(index, gn, ga, engine="faiss-flat"):
    return index.search_volumes(gn[:2], ga[:2], 3, engine=engine)


def test_every_file_is_listed_with_its_checksum(written):
    _, d, *_ = written
    files = json.loads((d / "hashindex.json").read_text())["files"]
    on_disk = {p.name for p in d.iterdir()} - {"hashindex.json"}
    assert set(files) == on_disk
    for name, entry in files.items():
        data = (d / name).read_bytes()
        expect = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        if name in ARRAY_FILES:  # the row arrays are checked at open by the faster sum64
            expect["sum64"] = sum64(data)
        assert entry == expect


def test_truncated_npy_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "codebook_normal.npy").read_bytes()
    (t / "codebook_normal.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(
        IndexFormatError, match="codebook_normal.npy: .* bytes, hashindex.json records"
    ):
        HashIndex.read(t)
    _replace(t, "codebook_normal.npy", raw[: len(raw) // 2])
    with pytest.raises(IndexFormatError, match="codebook_normal.npy: corrupt"):
        HashIndex.read(t)


def test_a_one_byte_flip_in_a_codebook_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = bytearray((t / "codebook_abnormal.npy").read_bytes())
    raw[-3] ^= 0x01  # the low bits of the last float: a tiny change of one codebook entry
    (t / "codebook_abnormal.npy").write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="codebook_abnormal.npy: sha256"):
        HashIndex.read(t)
    # without the checksums, the tables stored beside the bits no longer match the codebook
    with pytest.raises(IndexFormatError, match="bits_abnormal.npz: .*codebook_abnormal.npy"):
        HashIndex.read(t, verify=False)


@pytest.mark.parametrize("cut", [0, 30, -20])
def test_a_truncated_bits_npz_is_refused(written, tmp_path, cut):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "bits_normal.npz").read_bytes()
    _replace(t, "bits_normal.npz", raw[:cut])
    with pytest.raises(IndexFormatError, match="bits_normal.npz: corrupt"):
        HashIndex.read(t)


def test_wrong_format_version_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    _edit_meta(t, lambda m: m.update(format_version=999))
    with pytest.raises(IndexFormatError, match="format version 999"):
        HashIndex.read(t)


def test_wrong_K_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    _replace(t, "codebook_normal.npy", _npy(np.zeros((21, 4), np.float32)))
    with pytest.raises(IndexFormatError, match=r"expected float32 \(20, 4\)"):
        HashIndex.read(t)


def test_bits_of_another_codebook_are_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    other = make_codebook(np.random.default_rng(99), 20, 4)
    _replace(t, "codebook_normal.npy", _npy(other))
    with pytest.raises(IndexFormatError, match="bits_normal.npz"):
        HashIndex.read(t)


def test_rows_of_another_length_are_refused(written, tmp_path):
    _, d, *_ = written
    t = _broken_copy(d, tmp_path)
    _edit_meta(t, lambda m: m.update(ntotal=30))
    with pytest.raises(IndexFormatError, match=r"codes_normal.npy: expected uint8 \(30, 6\)"):
        HashIndex.read(t)


def test_faiss_ntotal_mismatch_is_refused_on_first_use(written, tmp_path):
    index, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    wrong = faiss.IndexBinaryFlat(index.flat["sum"].cpu.d)
    wrong.add(np.zeros((7, index.flat["sum"].nbytes), np.uint8))
    _replace(t, "faiss_sum.index", faiss.serialize_index_binary(wrong).tobytes())
    again = HashIndex.read(t)
    again.search_volumes(gn[:2], ga[:2], 3, engine="lut")  # the lut engine needs no FAISS file
    with pytest.raises(IndexFormatError, match=r"faiss_sum.index: FAISS ntotal 7 .* expected 40"):
        _first_faiss_search(again, gn, ga)


def test_reordered_faiss_rows_are_refused(written, tmp_path):
    index, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    flat = index.flat["sum"].cpu
    rows = flat.reconstruct_n(0, flat.ntotal)
    assert not np.array_equal(rows[0], rows[1])
    swapped = faiss.IndexBinaryFlat(flat.d)
    swapped.add(rows[[1, 0, *range(2, flat.ntotal)]])
    (t / "faiss_sum.index").write_bytes(faiss.serialize_index_binary(swapped).tobytes())
    again = HashIndex.read(t)
    with pytest.raises(IndexFormatError, match="faiss_sum.index: sha256"):
        _first_faiss_search(again, gn, ga)


def test_truncated_faiss_file_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "faiss_normal.index").read_bytes()
    _replace(t, "faiss_normal.index", raw[:40])
    again = HashIndex.read(t)
    _first_faiss_search(again, gn, ga)  # S_sum: only faiss_sum.index is loaded
    with pytest.raises(IndexFormatError, match="faiss_normal.index: corrupt FAISS index"):
        again.search_volumes(gn[:2], ga[:2], 3, engine="faiss-flat", mode="normal")


def test_faiss_files_opened_at_read_survive_a_later_replacement(written, tmp_path):
    index, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    again = HashIndex.read(t)
    (t / "faiss_sum.index").unlink()  # a later build replaces the files by rename
    expect = index.search_volumes(gn[:2], ga[:2], 3, engine="faiss-flat")
    for x, y in zip(expect, _first_faiss_search(again, gn, ga)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "names", [["../../etc/passwd"], ["faiss_sum.index/../../x.index"], ["/tmp/faiss_sum.index"], []]
)
def test_faiss_files_come_from_a_fixed_list(written, tmp_path, names):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    _edit_meta(t, lambda m: m.update(faiss_files=names))
    with pytest.raises(IndexFormatError, match="faiss_files"):
        HashIndex.read(t)


@pytest.mark.parametrize("meta", [[], "x", {"format_version": 2}, None, 3])
def test_malformed_json_is_refused(written, tmp_path, meta):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    (t / "hashindex.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="hashindex.json"):
        HashIndex.read(t)


def test_missing_json_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    (t / "hashindex.json").unlink()
    with pytest.raises(IndexFormatError, match="hashindex.json"):
        HashIndex.read(t)


# ---------------------------------------------------------------------------- stored rows


@pytest.mark.parametrize("engine", ["fastscan", "lut", "numpy"])
@pytest.mark.parametrize("mode", ["normal", "abnormal", "sum"])
@pytest.mark.parametrize("distance", ["hamming", "euclidean", "angular"])
def test_read_answers_as_the_brute_force(written, engine, mode, distance):
    """An index read from its folder alone (no code arrays passed) answers as the numpy
    reference over the codes it was built from."""
    index, d, gn, ga, vol, cn = written
    again = HashIndex.read(d)
    ca = again.tables["abnormal"].vectors
    hits = again.search_volumes(
        gn[:5], ga[:5], 4, mode=mode, distance=distance, engine=engine, exclude_volumes=vol[:5]
    )
    for b in range(5):
        dist = all_distances(index, cn, ca, gn, ga, gn[b], ga[b], mode, distance)
        expect = volume_topq(dist, vol, 4, exclude=int(vol[b]))
        np.testing.assert_allclose(hits.distances[b], [e[0] for e in expect], atol=1e-7)
        np.testing.assert_array_equal(hits.rows[b], [e[1] for e in expect])
        np.testing.assert_array_equal(hits.volumes[b], [e[2] for e in expect])


def test_read_maps_the_rows_and_the_fastscan_layout(written):
    _, d, gn, ga, vol, _ = written
    again = HashIndex.read(d)
    for array in (*again.codes.values(), *again.row_sqnorm.values(), again.volume_ids):
        assert not array.flags.writeable  # a read-only map of the file, not a copy
    assert again._codes_t is not None and again._fastscan().codes_t is again._codes_t
    normal, abnormal = again.reconstruct(np.arange(40))
    for book, grids, mine in (("normal", gn, normal), ("abnormal", ga, abnormal)):
        t = again.tables[book]
        np.testing.assert_array_equal(t.rep_of[mine], t.rep_of[grids])  # same vectors


def test_add_after_read_extends_the_mapped_rows(written, tmp_path):
    index, d, gn, ga, vol, _ = written
    again = HashIndex.read(d)
    again.add(gn[:3], ga[:3], np.array([50, 50, 51], np.int64))
    assert again.ntotal == 43 and again._codes_t is None
    again.write(tmp_path / "grown")
    grown = HashIndex.read(tmp_path / "grown")
    a = grown.search_volumes(gn[:4], ga[:4], 5, engine="fastscan")
    b = again.search_volumes(gn[:4], ga[:4], 5, engine="lut")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ARRAY_FILES)
def test_a_flipped_byte_in_a_stored_array_is_refused(written, tmp_path, name):
    _, d, *_ = written
    t = _broken_copy(d, tmp_path)
    raw = bytearray((t / name).read_bytes())
    raw[-1] ^= 0x01  # the last byte of the data: the header still parses
    (t / name).write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match=f"{name}: sum64"):
        HashIndex.read(t)


@pytest.mark.parametrize("name", ARRAY_FILES)
def test_a_truncated_stored_array_is_refused(written, tmp_path, name):
    _, d, *_ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / name).read_bytes()
    (t / name).write_bytes(raw[:-8])
    with pytest.raises(IndexFormatError, match=f"{name}: .* bytes, hashindex.json records"):
        HashIndex.read(t)
    _replace_array(t, name, raw[:-8])
    with pytest.raises(IndexFormatError, match=f"{name}: expected a C-order array"):
        HashIndex.read(t)


def _replace_array(t, name, data: bytes):
    _replace(t, name, data)
    _edit_meta(t, lambda m: m["files"][name].update(sum64=sum64(data)))


@pytest.mark.parametrize(
    "name, match",
    [
        ("codes_normal.npy", "row_sqnorm_normal.npy: the row norms do not match"),
        ("row_sqnorm_abnormal.npy", "row_sqnorm_abnormal.npy: the row norms do not match"),
        ("volume_ids.npy", "volume_ids.npy: the volume ids do not match"),
        ("fastscan_codes_t.npy", "fastscan_codes_t.npy: the layout does not match"),
    ],
)
def test_consistently_listed_rows_of_another_index_are_refused(written, tmp_path, name, match):
    """Files swapped for others of the right shape, with matching checksums, as a consistent
    but wrong writer would leave them: the spot checks of the derived arrays catch them."""
    _, d, *_ = written
    t = _broken_copy(d, tmp_path)
    array = np.load(t / name)
    if name == "volume_ids.npy":
        array = array + 1
    elif name == "fastscan_codes_t.npy":  # 40 rows: one block of 64; shift its rows
        array = np.roll(array, 1, axis=2)
    else:
        array = np.roll(array, 1, axis=0)
        if name == "codes_normal.npy":  # keep the norms of some rows, but not of all
            array[0] = array[1]
    _replace_array(t, name, _npy(array))
    with pytest.raises(IndexFormatError, match=match):
        HashIndex.read(t)


def test_representative_ids_outside_the_codebook_are_refused(written, tmp_path):
    index, d, *_ = written
    t = _broken_copy(d, tmp_path)
    codes = np.load(t / "codes_abnormal.npy")
    codes[7, 0] = index.tables["abnormal"].n_reps
    _replace_array(t, "codes_abnormal.npy", _npy(codes))
    with pytest.raises(IndexFormatError, match="codes_abnormal.npy: representative id"):
        HashIndex.read(t)


def test_an_older_format_is_refused_with_the_rebuild_fix(written, tmp_path):
    _, d, *_ = written
    t = _broken_copy(d, tmp_path)
    for name in ARRAY_FILES:
        (t / name).unlink()

    def version_2(meta):
        meta["format_version"] = 2
        for name in ARRAY_FILES:
            meta["files"].pop(name)

    _edit_meta(t, version_2)
    with pytest.raises(IndexFormatError, match=r"format version 2, expected 3 .* rebuild"):
        HashIndex.read(t)


def test_sum64_sees_any_one_byte_change():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 8 * 4096 * 3 + 5, dtype=np.uint8)
    base = sum64(data.tobytes())
    for pos in rng.choice(data.size, 200, replace=False):
        for delta in (1, 128, 255):
            changed = data.copy()
            changed[pos] ^= delta
            assert sum64(changed.tobytes()) != base, (pos, delta)
    assert sum64(b"") == sum64(b"") and len(sum64(b"abc")) == 16


def test_empty_and_wide_indexes_round_trip(tmp_path):
    """No rows (no row files), zero rows of a known grid, and codebooks of more than 256
    distinct vectors (uint16 ids, no fastscan layout) all read back as they were written."""
    rng = np.random.default_rng(5)
    empty = HashIndex.build(make_codebook(rng, 20, 4), make_codebook(rng, 12, 3))
    empty.write(tmp_path / "empty")
    assert HashIndex.read(tmp_path / "empty").grid is None
    none = np.zeros((0, 2, 3), np.uint16)
    empty.add(none, none, np.zeros(0, np.int64))
    empty.write(tmp_path / "zero")
    zero = HashIndex.read(tmp_path / "zero")
    assert zero.grid == (2, 3) and zero.ntotal == 0
    wide = HashIndex.build(
        rng.normal(size=(300, 4)).astype(np.float32), make_codebook(rng, 12, 3), bit_budget=16
    )
    gn = rng.integers(0, 300, (50, 2, 3)).astype(np.uint16)
    ga = rng.integers(0, 12, (50, 2, 3)).astype(np.uint16)
    vol = np.repeat(np.arange(10), 5).astype(np.int64)
    wide.add(gn, ga, vol)
    wide.write(tmp_path / "wide")
    again = HashIndex.read(tmp_path / "wide")
    assert again.codes["normal"].dtype == np.uint16 and again._codes_t is None
    assert not (tmp_path / "wide" / "fastscan_codes_t.npy").exists()
    for x, y in zip(
        wide.search_volumes(gn[:3], ga[:3], 4, distance="euclidean"),
        again.search_volumes(gn[:3], ga[:3], 4, distance="euclidean"),
    ):
        np.testing.assert_array_equal(x, y)


def test_index_files_names_exactly_what_write_puts_in_the_folder(written, tmp_path):
    """`index_files()` is the public file list: every file written is named, the required ones
    are always written, and a build without FAISS or a fastscan layout leaves out only optional
    ones."""
    _, d, *_ = written
    files = index_files()
    names = {p.name for p in d.iterdir()}
    assert files.meta == "hashindex.json" and files.meta in files.names
    assert names == set(files.names)  # this build has FAISS (flat and IVF) and the layout
    assert set(files.required) | set(files.optional) == set(files.names)
    assert not set(files.required) & set(files.optional)
    assert set(files.rows) == set(ARRAY_FILES) <= set(files.names)
    assert len(set(files.names)) == len(files.names)
    # no FAISS files, and more than 256 distinct vectors: no fastscan layout
    rng = np.random.default_rng(2)
    index = HashIndex.build(
        rng.normal(size=(300, 4)).astype(np.float32),
        make_codebook(rng, 12, 3),
        bit_budget=16,
        faiss_indexes=False,
    )
    gn = rng.integers(0, 300, (6, 2, 3)).astype(np.uint16)
    ga = rng.integers(0, 12, (6, 2, 3)).astype(np.uint16)
    index.add(gn, ga, np.arange(6, dtype=np.int64))
    index.write(tmp_path / "bare")
    assert {p.name for p in (tmp_path / "bare").iterdir()} == set(files.required)
