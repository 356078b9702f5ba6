"""The statistics behind every verdict (diagnostics/judge/stats.py), each shown on numbers worked by hand
or checked against its defining property by simulation."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from diagnostics.judge import stats


def test_pooled_noise_is_twice_the_pooled_variance_of_runs_of_one_seed():
    # seed A: 1.0, 1.1, 0.9 (ss 0.02, 2 df); seed B: 2.0, 2.2 (ss 0.02, 1 df); NaNs dropped
    sigma, df = stats.pooled_noise([[1.0, 1.1, 0.9, math.nan], [2.0, 2.2], [5.0]])
    assert df == 3 and sigma == pytest.approx(math.sqrt(2 * 0.04 / 3))
    assert stats.pooled_noise([[1.0], []]) == (pytest.approx(math.nan, nan_ok=True), 0)


def test_pooled_noise_estimates_the_sd_of_a_paired_difference():
    rng = np.random.default_rng(0)
    runs = 1.0 + 0.01 * rng.standard_normal((2000, 6))  # 2000 seeds, 6 runs each, sd 0.01 per run
    sigma, df = stats.pooled_noise(runs)
    assert df == 10000 and sigma == pytest.approx(0.01 * math.sqrt(2), rel=0.02)


def test_noise_test_one_seed_is_a_heavy_tailed_t_test_of_the_calibrated_scale():
    t, p, dof = stats.noise_test([0.3], 0.1, 10)
    assert t == pytest.approx(3.0) and dof == stats.SINGLE_TAIL_DF and p == pytest.approx(2 * sps.t.sf(3.0, 3))
    assert stats.noise_test([0.3], 0.1, 2)[2] == 2  # fewer calibrated degrees of freedom than that: those


def test_noise_test_pools_the_calibrated_noise_with_the_differences_spread():
    d = np.array([0.2, 0.4, 0.3])
    t, _, dof = stats.noise_test(d, 0.1, 10)
    s = math.sqrt((10 * 0.01 + ((d - d.mean()) ** 2).sum()) / 12)
    assert dof == 12 and t == pytest.approx(d.mean() * math.sqrt(3) / s)


def test_noise_test_power_grows_with_seeds():
    p = [float(stats.noise_test(np.full(n, 0.2), 0.1, 10)[1]) for n in (1, 2, 3, 5, 8)]
    assert all(a > b for a, b in zip(p, p[1:]))


def test_noise_test_without_noise_or_spread():
    assert float(stats.noise_test([0.0], math.nan, 0)[1]) == 1.0
    assert float(stats.noise_test([1e-9], math.nan, 0)[1]) == 0.0  # one seed, no noise measured: any difference
    assert float(stats.noise_test([1.0, 1.0], 0.0, 0)[1]) == 0.0
    assert math.isnan(float(stats.noise_test([math.nan], 0.1, 10)[1]))


def test_noise_test_is_vectorised_and_skips_nans():
    d = np.array([[0.1, 0.2, math.nan], [0.0, 0.0, 0.0]])
    t, p, dof = stats.noise_test(d, [0.1, 0.1], [10, 10])
    assert dof.tolist() == [11, 12] and p[1] == 1.0
    assert p[0] == pytest.approx(float(stats.noise_test([0.1, 0.2], 0.1, 10)[1]))


@pytest.mark.parametrize("n", [2, 5])
def test_noise_test_holds_its_level_when_the_noise_model_is_right(n):
    rng = np.random.default_rng(n)
    sigma_true, reps, df = 0.05, 20000, 10
    calib = sigma_true * rng.standard_normal((reps, df))
    sigma_hat = np.sqrt((calib**2).mean(axis=1))  # df independent differences
    d = sigma_true * rng.standard_normal((reps, n))
    _, p, _ = stats.noise_test(d, sigma_hat, df)
    assert abs((p < 0.05).mean() - 0.05) < 0.006


def test_holm_matches_the_textbook_example_and_ignores_nans():
    # Holm (1979) step-down: sorted p * (m - rank), made monotone
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.01, math.nan, 0.04])[::2] == pytest.approx([0.02, 0.04])
    assert stats.holm([]) == []


@pytest.mark.parametrize("n", [1, 3])
def test_mde_is_found_with_the_stated_power(n):
    sigma, df, alpha = 0.1, 10, 0.001
    m = stats.mde(sigma, df, n, alpha)
    rng = np.random.default_rng(1)
    reps = 20000
    calib = sigma * rng.standard_normal((reps, df))
    d = m + sigma * rng.standard_normal((reps, n))
    _, p, _ = stats.noise_test(d, np.sqrt((calib**2).mean(axis=1)), df)
    assert (p < alpha).mean() == pytest.approx(stats.POWER, abs=0.02)


def test_mde_shrinks_with_seeds_and_seeds_needed_inverts_it():
    mdes = [stats.mde(0.1, 10, n, 1e-4) for n in (1, 2, 5, 10)]
    assert all(a > b for a, b in zip(mdes, mdes[1:]))
    n = stats.seeds_needed(0.1, 10, mdes[2], 2e-4)  # several seeds: at half the level (two statistics)
    assert n == 5 and stats.mde(0.1, 10, 4, 1e-4) > mdes[2]
    assert math.isnan(stats.seeds_needed(1.0, 10, 1e-3, 1e-4))  # out of reach
    assert stats.mde(0.0, 10, 1, 1e-4) == 0 and math.isnan(stats.mde(math.nan, 0, 1, 1e-4))


def test_one_difference_is_not_rejected_more_often_than_alpha_under_heavy_tailed_noise():
    rng = np.random.default_rng(7)
    reps, df = 20000, 10
    calib = 0.05 * rng.standard_normal((reps, df))
    d = 0.05 * rng.standard_t(3, (reps, 1)) / np.sqrt(3)  # unit-variance t(3): chaotic reruns
    _, p, _ = stats.noise_test(d, np.sqrt((calib**2).mean(axis=1)), df)
    assert (p < 0.01).mean() <= 0.012


def test_flip_pvalue_against_the_calibrated_rate():
    assert stats.flip_pvalue(0, 5, 3, 10) == 1.0
    rate = 4 / 12  # Laplace: (3 + 1) / (10 + 2)
    assert stats.flip_pvalue(5, 5, 3, 10) == pytest.approx(rate**5)
    assert stats.flip_pvalue(1, 5, 3, 10) == pytest.approx(1 - (1 - rate) ** 5)
    assert stats.flip_pvalue(2, 5, 0, 10) < stats.flip_pvalue(2, 5, 5, 10)


def test_the_distributions_are_scipy_stats_bit_for_bit():
    """stats.py evaluates t, normal and chi-square through the special functions scipy.stats
    uses itself: the same numbers, so no verdict or mde moves by a bit."""
    from scipy import stats as sps

    from diagnostics.judge import stats

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 3, 500), rng.uniform(0, 40, 500), [0.0, 1e-300, 50.0, np.inf]])
    for dof in (1, 2, 3, 7, 10, 11, 30, 200, 1e6):
        assert np.array_equal(stats.t_sf(x, dof), sps.t.sf(x, dof), equal_nan=True)
        for q in (1e-12, 1e-6, 0.0025, 0.025, 0.5, 0.9):
            assert stats.t_isf(q, dof) == sps.t.isf(q, dof)
            assert stats.chi2_ppf(q, dof) == sps.chi2.ppf(q, dof) and stats.chi2_isf(q, dof) == sps.chi2.isf(q, dof)
        v = np.abs(x[np.isfinite(x)])
        assert np.array_equal(stats.chi2_pdf(v, dof), sps.chi2.pdf(v, dof))
    assert np.array_equal(stats.norm_sf(x), sps.norm.sf(x)) and np.array_equal(stats.norm_cdf(x), sps.norm.cdf(x))
