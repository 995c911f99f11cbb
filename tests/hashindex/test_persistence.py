"""Round trip through the index directory, and refusal of corrupt or mismatched files."""

import hashlib
import io
import json
import shutil

import faiss
import numpy as np
import pytest

from hashindex import HashIndex, IndexFormatError
from tests.hashindex.hashindex_reference import make_codebook, make_grids


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
    again = HashIndex.read(d, gn, ga, vol)
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
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_truncated_npy_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "codebook_normal.npy").read_bytes()
    (t / "codebook_normal.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(
        IndexFormatError, match="codebook_normal.npy: .* bytes, hashindex.json records"
    ):
        HashIndex.read(t, gn, ga, vol)
    _replace(t, "codebook_normal.npy", raw[: len(raw) // 2])
    with pytest.raises(IndexFormatError, match="codebook_normal.npy: corrupt"):
        HashIndex.read(t, gn, ga, vol)


def test_a_one_byte_flip_in_a_codebook_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = bytearray((t / "codebook_abnormal.npy").read_bytes())
    raw[-3] ^= 0x01  # the low bits of the last float: a tiny change of one codebook entry
    (t / "codebook_abnormal.npy").write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="codebook_abnormal.npy: sha256"):
        HashIndex.read(t, gn, ga, vol)
    HashIndex.read(t, gn, ga, vol, verify=False)  # same size: only the checksum sees it


@pytest.mark.parametrize("cut", [0, 30, -20])
def test_a_truncated_bits_npz_is_refused(written, tmp_path, cut):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "bits_normal.npz").read_bytes()
    _replace(t, "bits_normal.npz", raw[:cut])
    with pytest.raises(IndexFormatError, match="bits_normal.npz: corrupt"):
        HashIndex.read(t, gn, ga, vol)


def test_wrong_format_version_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    _edit_meta(t, lambda m: m.update(format_version=999))
    with pytest.raises(IndexFormatError, match="format version 999"):
        HashIndex.read(t, gn, ga, vol)


def test_wrong_K_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    _replace(t, "codebook_normal.npy", _npy(np.zeros((21, 4), np.float32)))
    with pytest.raises(IndexFormatError, match=r"expected float32 \(20, 4\)"):
        HashIndex.read(t, gn, ga, vol)


def test_bits_of_another_codebook_are_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    other = make_codebook(np.random.default_rng(99), 20, 4)
    _replace(t, "codebook_normal.npy", _npy(other))
    with pytest.raises(IndexFormatError, match="bits_normal.npz"):
        HashIndex.read(t, gn, ga, vol)


def test_codes_of_another_length_are_refused(written):
    _, d, gn, ga, vol, _ = written
    with pytest.raises(IndexFormatError, match="ntotal 40"):
        HashIndex.read(d, gn[:30], ga[:30], vol[:30])


def test_faiss_ntotal_mismatch_is_refused_on_first_use(written, tmp_path):
    index, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    wrong = faiss.IndexBinaryFlat(index.flat["sum"].cpu.d)
    wrong.add(np.zeros((7, index.flat["sum"].nbytes), np.uint8))
    _replace(t, "faiss_sum.index", faiss.serialize_index_binary(wrong).tobytes())
    again = HashIndex.read(t, gn, ga, vol)
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
    again = HashIndex.read(t, gn, ga, vol)
    with pytest.raises(IndexFormatError, match="faiss_sum.index: sha256"):
        _first_faiss_search(again, gn, ga)


def test_truncated_faiss_file_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "faiss_normal.index").read_bytes()
    _replace(t, "faiss_normal.index", raw[:40])
    again = HashIndex.read(t, gn, ga, vol)
    _first_faiss_search(again, gn, ga)  # S_sum: only faiss_sum.index is loaded
    with pytest.raises(IndexFormatError, match="faiss_normal.index: corrupt FAISS index"):
        again.search_volumes(gn[:2], ga[:2], 3, engine="faiss-flat", mode="normal")


def test_faiss_files_opened_at_read_survive_a_later_replacement(written, tmp_path):
    index, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    again = HashIndex.read(t, gn, ga, vol)
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
        HashIndex.read(t, gn, ga, vol)


@pytest.mark.parametrize("meta", [[], "x", {"format_version": 2}, None, 3])
def test_malformed_json_is_refused(written, tmp_path, meta):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    (t / "hashindex.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="hashindex.json"):
        HashIndex.read(t, gn, ga, vol)


def test_missing_json_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    (t / "hashindex.json").unlink()
    with pytest.raises(IndexFormatError, match="hashindex.json"):
        HashIndex.read(t, gn, ga, vol)
