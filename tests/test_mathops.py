"""Specification of the DreamerV3 math helpers in learner.mathops."""

import numpy as np
import pytest
import torch

from learner.mathops import (
    ReturnNormaliser,
    categorical_kl,
    free_bits,
    lambda_returns,
    straight_through_sample,
    symexp,
    symexp_bins,
    symlog,
    twohot_cross_entropy,
    twohot_decode,
    twohot_encode,
    unimix_log_probs,
)

VALUES = torch.tensor([0.0, 1e-3, -1e-3, 0.3, -0.3, 1.5, -3.7, 42.0, 123.4, -1e4, 1e6, -1e6])


def test_symexp_inverts_symlog():
    x = torch.tensor([0.0, 1e-6, -1e-6, 0.5, -0.5, 1.0, -7.0, 1e3, -1e5, 1e8], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(symlog(symexp(x.clamp(-30, 30))), x.clamp(-30, 30), rtol=1e-12, atol=1e-12)


def test_symlog_keeps_sign_and_compresses_large_magnitudes():
    x = torch.tensor([-1e6, -1.0, 0.0, 1.0, 1e6])
    y = symlog(x)
    assert torch.equal(torch.sign(y), torch.sign(x))
    assert y[-1] == pytest.approx(np.log1p(1e6))


def test_bins_are_255_symmetric_symexp_spaced_bins_spanning_symlog_20():
    bins = symexp_bins()
    assert bins.shape == (255,)
    assert bins[127] == 0.0
    assert torch.equal(bins, -bins.flip(0))
    expected = torch.linspace(-20, 20, 255, dtype=torch.float64)
    torch.testing.assert_close(symlog(bins.double()), expected, rtol=1e-5, atol=1e-5)


def test_twohot_round_trip_recovers_values_including_large_and_negative():
    bins = symexp_bins()
    weights = twohot_encode(VALUES, bins)
    torch.testing.assert_close(twohot_decode(weights, bins), VALUES, rtol=1e-5, atol=1e-6)


def test_twohot_weights_sum_to_one_on_at_most_two_adjacent_bins():
    weights = twohot_encode(VALUES, symexp_bins())
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(VALUES)))
    assert (weights >= 0).all()
    for row in weights:
        nonzero = torch.nonzero(row).flatten()
        assert 1 <= len(nonzero) <= 2
        assert nonzero.max() - nonzero.min() <= 1


def test_twohot_clips_values_beyond_the_outer_bins():
    bins = symexp_bins()
    weights = twohot_encode(torch.tensor([1e12, -1e12]), bins)
    assert weights[0, -1] == 1.0 and weights[1, 0] == 1.0


def test_twohot_decode_of_a_uniform_distribution_is_exactly_zero():
    # The outer bins are about 5e8; without symmetric cancellation rounding would leave noise.
    bins = symexp_bins()
    assert twohot_decode(torch.full((255,), 1.0 / 255), bins) == 0.0


def test_twohot_cross_entropy_is_lowest_for_logits_matching_the_target():
    bins = symexp_bins()
    target = torch.tensor(2.5)
    matching = torch.log(twohot_encode(target, bins) + 1e-9)
    uniform = torch.zeros(255)
    assert twohot_cross_entropy(matching, target, bins) < twohot_cross_entropy(uniform, target, bins)
    assert twohot_cross_entropy(uniform, target, bins) == pytest.approx(np.log(255), rel=1e-5)


def test_lambda_returns_match_a_hand_computed_three_step_example():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # index 0 is unused
    continues = torch.tensor([[1.0, 1.0, 0.5, 1.0]])  # index 0 is unused
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    discount, lam = 0.9, 0.5
    # R_3 = v_3 = 40
    # R_2 = r_3 + 0.9 * 1.0 * (0.5 * 40 + 0.5 * 40)      = 3 + 36         = 39
    # R_1 = r_2 + 0.9 * 0.5 * (0.5 * 30 + 0.5 * 39)      = 2 + 0.45 * 34.5 = 17.525
    # R_0 = r_1 + 0.9 * 1.0 * (0.5 * 20 + 0.5 * 17.525) = 1 + 0.9 * 18.7625 = 17.88625
    expected = torch.tensor([[17.88625, 17.525, 39.0]])
    torch.testing.assert_close(lambda_returns(rewards, continues, values, discount, lam), expected)


def test_lambda_zero_is_one_step_bootstrap_and_lambda_one_is_discounted_sum():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    continues = torch.ones(1, 4)
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    one_step = lambda_returns(rewards, continues, values, 0.5, 0.0)
    torch.testing.assert_close(one_step, rewards[:, 1:] + 0.5 * values[:, 1:])
    monte_carlo = lambda_returns(rewards, continues, values, 0.5, 1.0)
    torch.testing.assert_close(monte_carlo[:, 0], torch.tensor([1.0 + 0.5 * 2.0 + 0.25 * 3.0 + 0.125 * 40.0]))


def test_per_step_lambda_of_zero_cuts_the_recursion_there():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    continues = torch.ones(1, 4)
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    lam = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    returns = lambda_returns(rewards, continues, values, 0.5, lam)
    # Step 0 bootstraps from v_1 alone; later steps are unaffected.
    assert returns[0, 0] == pytest.approx(1.0 + 0.5 * 20.0)
    assert returns[0, 1] == pytest.approx(2.0 + 0.5 * 3.0 + 0.25 * 40.0)


def test_kl_with_free_bits_is_clipped_below_one_nat_without_gradient():
    kl = torch.tensor([0.2, 0.9, 3.0], requires_grad=True)
    clipped = free_bits(kl, 1.0)
    torch.testing.assert_close(clipped, torch.tensor([1.0, 1.0, 3.0]))
    clipped.sum().backward()
    torch.testing.assert_close(kl.grad, torch.tensor([0.0, 0.0, 1.0]))


def test_categorical_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    log_p = torch.log_softmax(torch.tensor([1.0, 2.0, 3.0]), -1)
    log_q = torch.log_softmax(torch.tensor([3.0, 2.0, 1.0]), -1)
    assert categorical_kl(log_p, log_p) == pytest.approx(0.0, abs=1e-7)
    assert categorical_kl(log_p, log_q) > 0.0
    assert free_bits(categorical_kl(log_p, log_p), 1.0) == 1.0


def test_return_normaliser_scale_is_the_5_to_95_percentile_range():
    returns = np.random.default_rng(0).normal(0.0, 10.0, size=1000).astype(np.float32)
    normaliser = ReturnNormaliser()
    normaliser.update(torch.from_numpy(returns))
    expected = np.percentile(returns, 95) - np.percentile(returns, 5)
    assert float(normaliser.scale()) == pytest.approx(expected, rel=1e-5)


def test_return_normaliser_averages_ranges_with_a_bias_corrected_ema_of_decay_099():
    first = np.linspace(0.0, 100.0, 1001, dtype=np.float32)
    second = np.linspace(0.0, 20.0, 1001, dtype=np.float32)
    normaliser = ReturnNormaliser(decay=0.99)
    normaliser.update(torch.from_numpy(first))
    normaliser.update(torch.from_numpy(second))
    range_first = np.percentile(first, 95) - np.percentile(first, 5)
    range_second = np.percentile(second, 95) - np.percentile(second, 5)
    expected = (0.99 * 0.01 * range_first + 0.01 * range_second) / (1 - 0.99**2)
    assert float(normaliser.scale()) == pytest.approx(expected, rel=1e-5)


def test_return_normaliser_scale_never_drops_below_one():
    normaliser = ReturnNormaliser()
    assert float(normaliser.scale()) == 1.0
    normaliser.update(torch.linspace(0.0, 0.5, 100))
    assert float(normaliser.scale()) == 1.0


def test_return_normaliser_state_is_saved_in_the_state_dict():
    normaliser = ReturnNormaliser()
    normaliser.update(torch.linspace(0.0, 50.0, 100))
    restored = ReturnNormaliser()
    restored.load_state_dict(normaliser.state_dict())
    assert float(restored.scale()) == float(normaliser.scale())


def test_unimix_keeps_every_class_at_least_one_percent_of_uniform():
    log_probs = unimix_log_probs(torch.tensor([100.0, 0.0, -100.0, 0.0]), 0.01)
    probs = log_probs.exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    assert (probs >= 0.01 / 4 - 1e-7).all()


def test_straight_through_sample_is_one_hot_with_gradients_to_the_probabilities():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    sample = straight_through_sample(torch.log_softmax(logits, -1))
    assert torch.equal(sample.detach().sum(-1), torch.ones(1))
    assert set(sample.detach().flatten().tolist()) <= {0.0, 1.0}
    (sample * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_straight_through_samples_follow_the_categorical_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.7])
    samples = straight_through_sample(probs.log().expand(20000, 3))
    torch.testing.assert_close(samples.mean(0), probs, atol=0.015, rtol=0.0)
