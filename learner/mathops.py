"""Math helpers of DreamerV3, named as in the paper.

Hafner et al., "Mastering Diverse Domains through World Models" (2023, revised 2024):

- ``symlog`` / ``symexp``: the squashing transform used for vector inputs, reconstruction
  targets and the two-hot bins.
- ``twohot_encode`` / ``twohot_decode`` / ``twohot_cross_entropy`` over ``symexp_bins``:
  the distributional regression used by the reward head and the critic.
- ``lambda_returns``: the bootstrapped lambda-return of the actor-critic.
- ``ReturnNormaliser``: the 5th-to-95th percentile return scale with a floor of 1.
- ``unimix_log_probs`` / ``straight_through_sample`` / ``categorical_kl`` / ``free_bits``:
  the categorical latent helpers of the RSSM.

All functions take and return ``torch.Tensor`` and are differentiable where it makes sense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def symlog(x: torch.Tensor) -> torch.Tensor:
    """Symmetric logarithm ``sign(x) * ln(1 + |x|)``: compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symexp_bins(num_bins: int = 255, limit: float = 20.0) -> torch.Tensor:
    """The two-hot bin positions ``symexp(linspace(-limit, limit, num_bins))`` as float32.

    The bins are exactly symmetric around an exact zero (the negative half is the mirrored
    positive half), which :func:`twohot_decode` relies on to cancel large opposite bins.
    """
    if num_bins < 3 or num_bins % 2 == 0:
        raise ValueError(f"num_bins must be odd and at least 3, got {num_bins}")
    positive = symexp(torch.linspace(0.0, limit, num_bins // 2 + 1, dtype=torch.float64))
    return torch.cat([-positive[1:].flip(0), positive]).float()


def twohot_encode(values: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Encode ``values`` (any shape) as two-hot weights over ``bins``, shape ``values.shape + (num_bins,)``.

    Each value puts weight on the two adjacent bins that enclose it, linearly interpolated so
    that ``weights @ bins == value``; values outside the bin range are clipped to the ends.
    """
    num_bins = bins.shape[0]
    values = values.clamp(bins[0], bins[-1])
    below = (torch.bucketize(values, bins, right=True) - 1).clamp(0, num_bins - 2)
    above = below + 1
    low, high = bins[below], bins[above]
    weight_above = ((values - low) / (high - low)).clamp(0.0, 1.0)
    weights = torch.zeros(*values.shape, num_bins, dtype=values.dtype, device=values.device)
    weights.scatter_(-1, below.unsqueeze(-1), (1.0 - weight_above).unsqueeze(-1))
    weights.scatter_(-1, above.unsqueeze(-1), weight_above.unsqueeze(-1))
    return weights


def twohot_decode(weights: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected value ``weights @ bins`` over the last dimension, for bins from :func:`symexp_bins`.

    The outer bins reach about 5e8, so a plain float32 dot product of a near-uniform
    distribution would leave rounding noise far larger than typical rewards. Pairing each
    positive bin with its mirrored negative bin (and skipping the zero bin) makes
    symmetric probability mass cancel exactly.
    """
    middle = bins.shape[0] // 2
    upper = weights[..., middle + 1 :]
    lower = weights[..., :middle].flip(-1)
    return ((upper - lower) * bins[middle + 1 :]).sum(-1)


def twohot_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the softmax of ``logits`` (..., num_bins) against the two-hot encoding of ``targets`` (...)."""
    return -(twohot_encode(targets, bins) * F.log_softmax(logits, dim=-1)).sum(-1)


def lambda_returns(
    rewards: torch.Tensor,
    continues: torch.Tensor,
    values: torch.Tensor,
    discount: float,
    lam: float | torch.Tensor,
) -> torch.Tensor:
    """Bootstrapped lambda-returns along dimension 1 (time), shape ``(N, T - 1)`` for inputs ``(N, T)``.

    ``rewards[:, t]``, ``continues[:, t]`` and ``values[:, t]`` all describe step ``t``: the
    reward received on arriving there, whether the episode goes on from there, and its
    value estimate. The recursion is

        R_t = r_{t+1} + discount * c_{t+1} * ((1 - lam_{t+1}) * v_{t+1} + lam_{t+1} * R_{t+1}),
        R_{T-1} = v_{T-1},

    so ``rewards[:, 0]`` and ``continues[:, 0]`` are unused. ``lam`` may be a tensor of shape
    ``(N, T)``; a zero at step ``t + 1`` bootstraps ``R_t`` from ``v_{t+1}`` alone, which cuts
    the recursion at episode boundaries in replayed data.
    """
    lam = torch.as_tensor(lam, dtype=values.dtype, device=values.device).expand_as(values)
    discounted = discount * continues[:, 1:]
    # The part of each step that does not depend on later returns, computed for all steps at once.
    immediate = rewards[:, 1:] + discounted * (1.0 - lam[:, 1:]) * values[:, 1:]
    recursive = discounted * lam[:, 1:]
    next_return = values[:, -1]
    returns = []
    for step in reversed(range(values.shape[1] - 1)):
        next_return = immediate[:, step] + recursive[:, step] * next_return
        returns.append(next_return)
    return torch.stack(returns[::-1], dim=1)


class ReturnNormaliser(nn.Module):
    """Return scale ``S = max(limit, EMA(Per(R, 95) - Per(R, 5)))`` that advantages are divided by.

    The range between the 5th and 95th percentile of each batch of returns is averaged with
    an exponential moving average (decay 0.99). With ``debias`` the average is corrected for
    its zero initialisation, so after the first update the scale is exactly the first batch's
    range; without it (the published setting) the average grows from zero, so early
    advantages are divided by ``limit``.
    Dividing only by ranges above ``limit`` keeps small, noisy returns from being amplified.
    The state lives in buffers so it is saved with the module's ``state_dict``.
    """

    def __init__(
        self,
        decay: float = 0.99,
        low_percentile: float = 5.0,
        high_percentile: float = 95.0,
        limit: float = 1.0,
        debias: bool = True,
    ) -> None:
        super().__init__()
        self.decay = decay
        self.limit = limit
        self.debias = debias
        quantiles = torch.tensor([low_percentile, high_percentile]) / 100.0
        self.register_buffer("quantiles", quantiles, persistent=False)
        self.register_buffer("range_average", torch.zeros(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # Data-parallel training (learner.parallel) sets this to the mean over the ranks, so that every rank
        # folds in the same batch range and keeps the same scale.
        self.reduce = None

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> None:
        """Fold the percentile range of ``returns`` (any shape) into the moving average."""
        low, high = torch.quantile(returns.detach().flatten().float(), self.quantiles)
        spread = high - low if self.reduce is None else self.reduce(high - low)
        self.range_average.mul_(self.decay).add_((1.0 - self.decay) * spread)
        self.count.add_(1)

    def scale(self) -> torch.Tensor:
        """Current scale, a scalar tensor of at least ``limit`` (exactly ``limit`` before any update)."""
        if not self.debias:
            return torch.clamp(self.range_average, min=self.limit)
        bias_correction = 1.0 - self.decay ** self.count.float()
        # Before the first update both the average and the correction are zero; the clamp on
        # the correction (its smallest value after one update) turns that 0 / 0 into 0, so the
        # scale is ``limit`` without branching on the count (no device synchronisation).
        average = self.range_average / bias_correction.clamp(min=1.0 - self.decay)
        return torch.clamp(average, min=self.limit)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension; for a handful of classes the explicit form runs several times faster on CPUs."""
    if logits.shape[-1] > 8:
        return F.softmax(logits, dim=-1)
    exp = (logits - logits.amax(-1, keepdim=True)).exp()
    return exp / exp.sum(-1, keepdim=True)


def one_hot(index: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot vectors ``index.shape + (classes,)`` (a broadcast comparison, faster than ``F.one_hot`` + cast)."""
    return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).to(dtype)


def unimix_log_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities of a categorical over the last dimension mixed with ``unimix`` of uniform.

    Keeping every class at least ``unimix / classes`` likely bounds the KL terms and log
    probabilities, which avoids spikes in the world-model loss.
    """
    probs = _softmax(logits)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return torch.log(probs)


def categorical_sample(log_probs: torch.Tensor) -> torch.Tensor:
    """Class indices sampled from the categoricals over the last dimension, shape ``log_probs.shape[:-1]``.

    Inverse-CDF sampling: one uniform number per categorical compared with the cumulative
    probabilities. It draws a fraction of the random numbers of the Gumbel-max trick, which
    matters in imagination where thousands of states sample 32 latents every step.
    """
    cdf = log_probs.detach().exp().cumsum(-1)
    uniform = torch.rand(log_probs.shape[:-1] + (1,), device=log_probs.device, dtype=cdf.dtype)
    # Scaling by the total absorbs the rounding of the cumulative sum, so the last class is reachable.
    return (cdf < uniform * cdf[..., -1:]).sum(-1).clamp(max=log_probs.shape[-1] - 1)


def straight_through_sample(log_probs: torch.Tensor) -> torch.Tensor:
    """One-hot sample of the categorical over the last dimension with straight-through gradients.

    The forward value is the one-hot sample; the gradient flows to the probabilities as if
    the sample were the probabilities themselves (only when ``log_probs`` requires a gradient).
    """
    sample = one_hot(categorical_sample(log_probs), log_probs.shape[-1], log_probs.dtype)
    if not log_probs.requires_grad:
        return sample
    probs = log_probs.exp()
    return sample + probs - probs.detach()


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` of categoricals given by log-probabilities over the last dimension."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def free_bits(kl: torch.Tensor, free_nats: float) -> torch.Tensor:
    """Clip a KL term below at ``free_nats``: under it, the term stops pushing the model (zero gradient)."""
    return torch.clamp(kl, min=free_nats)
