"""Round trip through the index directory, and refusal of corrupt or mismatched files."""

import json
import shutil

import faiss
import numpy as np
import pytest
from hashindex_reference import make_codebook, make_grids

from hashindex import HashIndex, IndexFormatError


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
    assert {"codebook_normal.npy", "codebook_abnormal.npy", "bits_normal.npz",
            "bits_abnormal.npz", "hashindex.json", "faiss_normal.index", "faiss_abnormal.index",
            "faiss_sum.index", "faiss_ivf_normal.index", "faiss_ivf_abnormal.index",
            "faiss_ivf_sum.index"} <= names
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
    for engine, dist in [("lut", "hamming"), ("lut", "euclidean"), ("numpy", "angular"),
                         ("faiss-flat", "hamming"), ("faiss-ivf", "hamming")]:
        for norm in (False, True) if engine in ("lut", "numpy") else (False,):
            a = index.search_volumes(gn[:6], ga[:6], 4, distance=dist, engine=engine,
                                     normalized_sum=norm, exclude_volumes=vol[:6])
            b = again.search_volumes(gn[:6], ga[:6], 4, distance=dist, engine=engine,
                                     normalized_sum=norm, exclude_volumes=vol[:6])
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


def _broken_copy(d, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(d, target)
    return target


def test_truncated_npy_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "codebook_normal.npy").read_bytes()
    (t / "codebook_normal.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFormatError, match="codebook_normal.npy"):
        HashIndex.read(t, gn, ga, vol)


def test_wrong_format_version_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    meta = json.loads((t / "hashindex.json").read_text())
    meta["format_version"] = 999
    (t / "hashindex.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="format version 999"):
        HashIndex.read(t, gn, ga, vol)


def test_wrong_K_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    np.save(t / "codebook_normal.npy", np.zeros((21, 4), np.float32))
    with pytest.raises(IndexFormatError, match=r"expected float32 \(20, 4\)"):
        HashIndex.read(t, gn, ga, vol)


def test_bits_of_another_codebook_are_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    other = make_codebook(np.random.default_rng(99), 20, 4)
    np.save(t / "codebook_normal.npy", other)
    with pytest.raises(IndexFormatError, match="bits_normal.npz"):
        HashIndex.read(t, gn, ga, vol)


def test_codes_of_another_length_are_refused(written):
    _, d, gn, ga, vol, _ = written
    with pytest.raises(IndexFormatError, match="ntotal 40"):
        HashIndex.read(d, gn[:30], ga[:30], vol[:30])


def test_faiss_ntotal_mismatch_is_refused(written, tmp_path):
    index, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    wrong = faiss.IndexBinaryFlat(index.flat["sum"].cpu.d)
    wrong.add(np.zeros((7, index.flat["sum"].nbytes), np.uint8))
    faiss.write_index_binary(wrong, str(t / "faiss_sum.index"))
    with pytest.raises(IndexFormatError, match=r"faiss_sum.index: FAISS ntotal 7, expected 40"):
        HashIndex.read(t, gn, ga, vol)


def test_truncated_faiss_file_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    raw = (t / "faiss_normal.index").read_bytes()
    (t / "faiss_normal.index").write_bytes(raw[:40])
    with pytest.raises(IndexFormatError, match="faiss_normal.index"):
        HashIndex.read(t, gn, ga, vol)


def test_missing_json_is_refused(written, tmp_path):
    _, d, gn, ga, vol, _ = written
    t = _broken_copy(d, tmp_path)
    (t / "hashindex.json").unlink()
    with pytest.raises(IndexFormatError, match="hashindex.json"):
        HashIndex.read(t, gn, ga, vol)
