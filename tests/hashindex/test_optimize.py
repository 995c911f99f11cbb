"""Algorithm A.1 and the bit budget, checked by brute force over all K codes."""

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.binarize import pair_indices, round_small_norms
from hashindex.optimize import optimize_codebook
from tests.hashindex.hashindex_reference import code_bits, make_codebook


def nearest_sets(bits):
    """For every code, the set of nearest *other* codes by Hamming distance, ties included."""
    d = (bits[:, None, :] != bits[None, :, :]).sum(axis=2).astype(float)
    np.fill_diagonal(d, np.inf)
    return [frozenset(np.flatnonzero(row == row.min())) for row in d]


CASES = {
    "random": dict(K=24, D=4),
    "zeros+dups": dict(K=30, D=3, n_zero=10, n_tiny=3, n_dup=3),
    "tiny-dim": dict(K=20, D=2, n_zero=4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimized_bits_keep_every_nearest_set(case):
    rng = np.random.default_rng(11)
    cb = make_codebook(rng, **CASES[case])
    opt, _ = optimize_codebook(round_small_norms(cb))
    K = cb.shape[0]
    full = code_bits(cb, list(zip(*pair_indices(K))))
    kept = code_bits(cb, [tuple(p) for p in opt.pairs])
    assert opt.E == K * (K - 1) // 2 and 0 < opt.E_star < opt.E
    assert nearest_sets(kept) == nearest_sets(full)
    # iterate-until-stable: no single remaining bit can go without changing some set
    for e in range(kept.shape[1]):
        assert nearest_sets(np.delete(kept, e, axis=1)) != nearest_sets(full)


def test_duplicate_codes_share_bits_and_stay_nearest():
    rng = np.random.default_rng(2)
    cb = make_codebook(rng, 16, 3, n_zero=5, n_dup=2)
    opt, extra = optimize_codebook(round_small_norms(cb))
    bits = code_bits(cb, [tuple(p) for p in opt.pairs])
    np.testing.assert_array_equal(bits[0], bits[1])  # duplicates of code 0
    np.testing.assert_array_equal(bits[11], bits[15])  # two zero codes
    sets = nearest_sets(bits)
    assert sets[0] == {1, 2} and sets[11] == {12, 13, 14, 15}
    # hyperplanes between identical vectors never survive
    reps = extra["rep_of"]
    assert np.all(reps[opt.pairs[:, 0]] != reps[opt.pairs[:, 1]])


def test_bit_budget_length_and_curve():
    rng = np.random.default_rng(4)
    cb = make_codebook(rng, 48, 8, n_zero=8)
    faithful = HashIndex.build(cb, cb[:20].copy())
    e_star = faithful.report["normal"]["E_star_faithful"]
    budget = 16
    assert e_star > budget
    index = HashIndex.build(cb, cb[:20].copy(), bit_budget=budget)
    rep = index.report["normal"]
    assert rep["E_star"] == budget and rep["E_star_faithful"] == e_star
    assert index.tables["normal"].packed.shape == (48, budget // 8)
    curve = rep["bit_budget_curve"]
    lengths = [c["length"] for c in curve]
    assert lengths[0] == e_star and lengths[-1] == budget and lengths == sorted(lengths)[::-1]
    # fewer bits cannot rank better by much: top-10 concordance is monotone-ish
    assert curve[-1]["top10"] <= curve[0]["top10"] + 0.1
    # the budget keeps the most informative bits: better than a random subset of that length
    from hashindex.concordance import concordance
    from hashindex.optimize import hamming_table

    live = np.flatnonzero(np.linalg.norm(cb, axis=1) > 0)
    sq = ((cb[live, None, :].astype(float) - cb[None, live, :]) ** 2).sum(-1)
    full = code_bits(cb, [tuple(p) for p in faithful.tables["normal"].pairs])[live]
    rand = []
    for s in range(5):
        pick = np.random.default_rng(s).choice(full.shape[1], budget, replace=False)
        ham = hamming_table(np.packbits(full[:, pick], axis=1, bitorder="little"))
        rand.append(concordance(sq, ham.astype(float))["top10"])
    assert curve[-1]["top10"] >= np.mean(rand) - 0.05
    with pytest.raises(ValueError, match="multiple of 8"):
        HashIndex.build(cb, cb, bit_budget=12)


def test_report_fields():
    rng = np.random.default_rng(9)
    cb = make_codebook(rng, 20, 4, n_zero=6)
    rep = HashIndex.build(cb, cb).report["normal"]
    assert rep["K"] == 20 and rep["live"] == 14 and rep["distinct"] == 15
    assert rep["E"] == 190 and rep["E_distinct"] == 190 - 15  # minus the 6·5/2 zero–zero pairs
    assert rep["compression"] == pytest.approx(rep["E_star"] / 190)
    for key in ("b_all", "b_live", "b_star_all", "b_star_live"):
        assert set(rep["concordance"][key]) == {"top1", "top5", "top10"}
        assert all(0 <= v <= 1 for v in rep["concordance"][key].values())


def test_many_codes_span_several_words_and_removal_batches():
    # 100 codes: bit sets over codes take two uint64 words, and thousands of removals cross
    # many of the kernel's 64-removal batches; the nearest sets must still be those of all bits
    rng = np.random.default_rng(5)
    cb = make_codebook(rng, 100, 5, n_zero=12, n_dup=4)
    opt, _ = optimize_codebook(round_small_norms(cb))
    full = code_bits(cb, list(zip(*pair_indices(100))))
    kept = code_bits(cb, [tuple(p) for p in opt.pairs])
    assert opt.E - opt.E_star > 10 * 64
    assert nearest_sets(kept) == nearest_sets(full)
