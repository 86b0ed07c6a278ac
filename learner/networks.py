"""The networks of DreamerV3 as small named modules.

- ``MLP``: Linear + RMSNorm + SiLU blocks, the building block of every head.
- ``ObservationEncoder`` / ``ObservationDecoder``: a CNN per image observation and one
  symlog MLP for all vector observations, and their mirror images.
- ``RSSM``: the recurrent state-space model with a normalised GRU deterministic state and a
  categorical stochastic state.
- ``TwoHotHead`` (reward, critic), ``ContinueHead`` and ``Actor``.

Observation layout (``ObsSpec``): a uint8 entry with three dimensions ``(H, W, C)`` is an image;
every other entry is a vector that is flattened and cast to float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learner.mathops import (
    straight_through_sample,
    symexp_bins,
    symlog,
    twohot_cross_entropy,
    twohot_decode,
    unimix_log_probs,
)

ObsSpec = dict[str, tuple[tuple[int, ...], str]]
"""Observation key -> (shape, dtype string) of one observation, without batch or time dimensions."""


def split_obs_spec(obs_spec: ObsSpec) -> tuple[dict[str, tuple[int, int, int]], dict[str, tuple[int, ...]]]:
    """Split an observation spec into image shapes ``(H, W, C)`` and vector shapes, in spec order."""
    images: dict[str, tuple[int, int, int]] = {}
    vectors: dict[str, tuple[int, ...]] = {}
    for key, (shape, dtype) in obs_spec.items():
        if "." in key or not key:
            raise ValueError(f"observation key {key!r} must be non-empty and contain no '.'")
        shape = tuple(int(size) for size in shape)
        if np.dtype(dtype) == np.uint8 and len(shape) == 3:
            images[key] = (shape[0], shape[1], shape[2])
        else:
            vectors[key] = shape
    return images, vectors


class MLP(nn.Module):
    """``layers`` blocks of Linear -> RMSNorm -> SiLU with ``units`` outputs each."""

    def __init__(self, in_features: int, units: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for index in range(layers):
            blocks += [nn.Linear(in_features if index == 0 else units, units), nn.RMSNorm(units), nn.SiLU()]
        self.blocks = nn.Sequential(*blocks)
        self.out_features = units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks to the last dimension of ``x``."""
        return self.blocks(x)


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channel dimension of ``(N, C, H, W)`` feature maps."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every pixel's channel vector to unit root-mean-square, then scale per channel."""
        # Moving channels last lets the fused rms_norm kernel do the work in one pass.
        channels_last = x.permute(0, 2, 3, 1)
        return F.rms_norm(channels_last, (x.shape[1],), self.weight, self.eps).permute(0, 3, 1, 2)


def cnn_stages(height: int, width: int, depth: int) -> list[tuple[int, int, int]]:
    """``(channels, height, width)`` after each stride-2 convolution of the image encoder.

    Every stage halves the resolution and doubles the channels (starting at ``depth``) until
    the smaller side is at most 4 pixels.
    """
    if min(height, width) < 8:
        raise ValueError(f"images need at least 8 pixels per side, got {height}x{width}")
    stages = []
    channels = depth
    while min(height, width) > 4:
        height, width = height // 2, width // 2
        stages.append((channels, height, width))
        channels *= 2
    return stages


class ImageEncoder(nn.Module):
    """CNN from a float image ``(N, C, H, W)`` in [-0.5, 0.5] to a flat embedding ``(N, out_features)``."""

    def __init__(self, image_shape: tuple[int, int, int], depth: int) -> None:
        super().__init__()
        height, width, channels = image_shape
        stages = cnn_stages(height, width, depth)
        layers: list[nn.Module] = []
        for out_channels, _, _ in stages:
            layers += [
                nn.Conv2d(channels, out_channels, kernel_size=4, stride=2, padding=1),
                ChannelRMSNorm(out_channels),
                nn.SiLU(),
            ]
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.out_features = math.prod(stages[-1])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Embed a batch of channel-first images."""
        return self.layers(image).flatten(1)


class ImageDecoder(nn.Module):
    """Transposed CNN from features to a channel-first image ``(N, C, H, W)`` of pixels scaled to [0, 1].

    It mirrors :class:`ImageEncoder` stage by stage; ``output_padding`` restores odd sizes
    that the encoder's halving rounded down, so any image of at least 8x8 comes back exactly.
    """

    def __init__(self, feature_dim: int, image_shape: tuple[int, int, int], depth: int) -> None:
        super().__init__()
        height, width, channels = image_shape
        stages = [(channels, height, width)] + cnn_stages(height, width, depth)
        first_channels, first_height, first_width = stages[-1]
        self.first_shape = (first_channels, first_height, first_width)
        self.project = nn.Linear(feature_dim, first_channels * first_height * first_width)
        layers: list[nn.Module] = [ChannelRMSNorm(first_channels), nn.SiLU()]
        for index in range(len(stages) - 1, 0, -1):
            in_channels, in_height, in_width = stages[index]
            out_channels, out_height, out_width = stages[index - 1]
            layers.append(
                nn.ConvTranspose2d(
                    in_channels,
                    out_channels,
                    kernel_size=4,
                    stride=2,
                    padding=1,
                    output_padding=(out_height - 2 * in_height, out_width - 2 * in_width),
                )
            )
            if index > 1:
                layers += [ChannelRMSNorm(out_channels), nn.SiLU()]
        # Centre the untrained output on mid-grey, the mean of [0, 1] pixels.
        nn.init.constant_(layers[-1].bias, 0.5)
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Decode ``(N, feature_dim)`` features into ``(N, C, H, W)`` images."""
        return self.layers(self.project(features).reshape(-1, *self.first_shape))


class ObservationEncoder(nn.Module):
    """Embeds a dict of observations: a CNN per image key, one symlog MLP over all vector keys.

    Inputs keep their batch dimensions: ``obs[key]`` has shape ``batch + shape`` (e.g.
    ``(B, T, H, W, C)`` uint8 images); the output is ``batch + (out_features,)``.
    """

    def __init__(self, obs_spec: ObsSpec, units: int, layers: int, cnn_depth: int) -> None:
        super().__init__()
        self.image_shapes, self.vector_shapes = split_obs_spec(obs_spec)
        self.image_encoders = nn.ModuleDict(
            {key: ImageEncoder(shape, cnn_depth) for key, shape in self.image_shapes.items()}
        )
        vector_size = sum(math.prod(shape) for shape in self.vector_shapes.values())
        self.vector_encoder = MLP(vector_size, units, layers) if self.vector_shapes else None
        self.out_features = sum(encoder.out_features for encoder in self.image_encoders.values()) + (
            units if self.vector_shapes else 0
        )

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embed observations with arbitrary leading batch dimensions."""
        parts = []
        for key, encoder in self.image_encoders.items():
            image = obs[key]
            batch = image.shape[:-3]
            # Channel-first on the uint8 image (4x less memory to move), then one float buffer.
            channels_first = image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2).contiguous()
            pixels = channels_first.float().div_(255.0).sub_(0.5)
            parts.append(encoder(pixels).reshape(*batch, -1))
        if self.vector_encoder is not None:
            vectors = [
                obs[key].reshape(*obs[key].shape[: obs[key].dim() - len(shape)], -1).float()
                for key, shape in self.vector_shapes.items()
            ]
            parts.append(self.vector_encoder(symlog(torch.cat(vectors, dim=-1))))
        return torch.cat(parts, dim=-1)


class ObservationDecoder(nn.Module):
    """Reconstructs every observation from latent features and scores the reconstruction.

    Images are predicted as pixels scaled to [0, 1]; vectors are predicted in symlog space.
    """

    def __init__(self, obs_spec: ObsSpec, feature_dim: int, units: int, layers: int, cnn_depth: int) -> None:
        super().__init__()
        self.image_shapes, self.vector_shapes = split_obs_spec(obs_spec)
        self.image_decoders = nn.ModuleDict(
            {key: ImageDecoder(feature_dim, shape, cnn_depth) for key, shape in self.image_shapes.items()}
        )
        self.vector_sizes = {key: math.prod(shape) for key, shape in self.vector_shapes.items()}
        if self.vector_shapes:
            self.vector_trunk = MLP(feature_dim, units, layers)
            self.vector_out = nn.Linear(units, sum(self.vector_sizes.values()))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions for every key, shaped ``batch + shape`` (images in [0, 1] scale, vectors in symlog)."""
        batch = features.shape[:-1]
        predictions = {
            key: image.permute(0, 2, 3, 1).reshape(*batch, *self.image_shapes[key])
            for key, image in self._images(features).items()
        }
        predictions.update(self._vectors(features))
        return predictions

    def loss(self, features: torch.Tensor, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-key reconstruction loss: summed over an observation's entries, averaged over batch dimensions.

        Images: squared error of [0, 1]-scaled pixels. Vectors: squared error against ``symlog(target)``.
        """
        steps = features[..., 0].numel()
        losses = {}
        for key, prediction in self._images(features).items():
            # Compared channel-first: moving the small uint8 target is much cheaper than float
            # arithmetic on a permuted (strided) prediction, and the fused mse_loss avoids
            # large temporaries.
            image = obs[key].reshape(-1, *self.image_shapes[key]).permute(0, 3, 1, 2).contiguous()
            target = image.float().div_(255.0)
            losses[key] = F.mse_loss(prediction, target, reduction="sum") / steps
        for key, prediction in self._vectors(features).items():
            target = symlog(obs[key].float())
            losses[key] = F.mse_loss(prediction, target, reduction="sum") / steps
        return losses

    def _images(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = features.reshape(-1, features.shape[-1])
        return {key: decoder(flat) for key, decoder in self.image_decoders.items()}

    def _vectors(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.vector_shapes:
            return {}
        batch = features.shape[:-1]
        parts = self.vector_out(self.vector_trunk(features)).split(list(self.vector_sizes.values()), dim=-1)
        return {
            key: part.reshape(*batch, *shape) for (key, shape), part in zip(self.vector_shapes.items(), parts)
        }


class NormGRUCell(nn.Module):
    """GRU cell with RMSNorm on the gate pre-activations, as in DreamerV3.

    The update gate is biased towards keeping the previous state (``sigmoid(x - 1)``), which
    helps the deterministic state carry information across many steps.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size + hidden_size, 3 * hidden_size)
        self.norm = nn.RMSNorm(3 * hidden_size)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """One step from ``state`` given input ``x``; returns the new state."""
        gates = self.norm(self.linear(torch.cat([x, state], dim=-1)))
        reset, candidate, update = gates.chunk(3, dim=-1)
        candidate = torch.tanh(torch.sigmoid(reset) * candidate)
        update = torch.sigmoid(update - 1.0)
        return update * candidate + (1.0 - update) * state


class LatentState(NamedTuple):
    """RSSM state: deterministic ``deter`` (..., deter), one-hot stochastic ``stoch`` (..., stoch, classes)."""

    deter: torch.Tensor
    stoch: torch.Tensor


class RSSM(nn.Module):
    """Recurrent state-space model.

    ``h_t = f(h_{t-1}, z_{t-1}, a_{t-1})``; ``z_t ~ q(z | h_t, x_t)`` when observing, ``p(z | h_t)``
    when imagining.

    The stochastic state is ``stoch`` categorical latents with ``classes`` classes each,
    mixed with ``unimix`` of uniform and sampled with straight-through gradients. Episodes
    start from a learned initial state: ``tanh`` of a parameter for ``h`` and the mode of the
    prior at that ``h`` for ``z``.
    """

    def __init__(
        self,
        embed_dim: int,
        action_dim: int,
        deter: int,
        hidden: int,
        stoch: int,
        classes: int,
        unimix: float,
    ) -> None:
        super().__init__()
        self.stoch = stoch
        self.classes = classes
        self.unimix = unimix
        self.initial_deter = nn.Parameter(torch.zeros(deter))
        self.transition_input = nn.Sequential(
            nn.Linear(stoch * classes + action_dim, hidden), nn.RMSNorm(hidden), nn.SiLU()
        )
        self.gru = NormGRUCell(hidden, deter)
        self.prior_net = nn.Sequential(
            nn.Linear(deter, hidden), nn.RMSNorm(hidden), nn.SiLU(), nn.Linear(hidden, stoch * classes)
        )
        self.posterior_net = nn.Sequential(
            nn.Linear(deter + embed_dim, hidden),
            nn.RMSNorm(hidden),
            nn.SiLU(),
            nn.Linear(hidden, stoch * classes),
        )
        self.feature_dim = deter + stoch * classes

    def features(self, state: LatentState) -> torch.Tensor:
        """The input of all heads: ``concat(h, flatten(z))``."""
        return torch.cat([state.deter, state.stoch.flatten(-2)], dim=-1)

    def initial_state(self, batch_size: int) -> LatentState:
        """The learned initial state, repeated for ``batch_size`` sequences."""
        deter = torch.tanh(self.initial_deter).expand(batch_size, -1)
        mode = self.prior_log_probs(deter[:1]).argmax(-1)
        stoch = F.one_hot(mode, self.classes).to(deter.dtype).expand(batch_size, -1, -1)
        return LatentState(deter, stoch)

    def prior_log_probs(self, deter: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., stoch, classes) of the prior ``p(z | h)``."""
        logits = self.prior_net(deter).unflatten(-1, (self.stoch, self.classes))
        return unimix_log_probs(logits, self.unimix)

    def posterior_log_probs(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., stoch, classes) of the posterior ``q(z | h, embedded observation)``."""
        logits = self.posterior_net(torch.cat([deter, embed], dim=-1)).unflatten(-1, (self.stoch, self.classes))
        return unimix_log_probs(logits, self.unimix)

    def recurrent_step(self, state: LatentState, action: torch.Tensor) -> torch.Tensor:
        """The next deterministic state ``h`` from the previous state and the action taken in it."""
        x = self.transition_input(torch.cat([state.stoch.flatten(-2), action], dim=-1))
        return self.gru(x, state.deter)

    def imagine_step(self, state: LatentState, action: torch.Tensor) -> LatentState:
        """One step of the learned dynamics without an observation (sampled from the prior)."""
        deter = self.recurrent_step(state, action)
        return LatentState(deter, straight_through_sample(self.prior_log_probs(deter)))

    def observe_step(
        self, state: LatentState, action: torch.Tensor, embed: torch.Tensor
    ) -> tuple[LatentState, torch.Tensor]:
        """One step filtered with an embedded observation; returns the state and posterior log-probabilities."""
        deter = self.recurrent_step(state, action)
        posterior = self.posterior_log_probs(deter, embed)
        return LatentState(deter, straight_through_sample(posterior)), posterior

    def observe(
        self, embed: torch.Tensor, previous_action: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[LatentState, torch.Tensor, torch.Tensor]:
        """Filter whole sequences ``(B, T, ...)``.

        ``previous_action[:, t]`` is the action taken before observation ``t``. Where
        ``is_first[:, t]`` is true the state is reset to the initial state and the previous
        action to zeros before stepping, so episodes inside a sequence do not leak into each
        other. Returns the posterior states, posterior and prior log-probabilities.
        """
        batch, length = embed.shape[:2]
        initial = self.initial_state(batch)
        state = initial
        deters, stochs, posteriors = [], [], []
        for step in range(length):
            first = is_first[:, step, None]
            state = LatentState(
                torch.where(first, initial.deter, state.deter),
                torch.where(first[..., None], initial.stoch, state.stoch),
            )
            action = previous_action[:, step] * (~first).to(previous_action.dtype)
            state, posterior = self.observe_step(state, action, embed[:, step])
            deters.append(state.deter)
            stochs.append(state.stoch)
            posteriors.append(posterior)
        states = LatentState(torch.stack(deters, dim=1), torch.stack(stochs, dim=1))
        # The prior depends on h alone, so it is computed for all steps at once after the loop.
        return states, torch.stack(posteriors, dim=1), self.prior_log_probs(states.deter)


class TwoHotHead(nn.Module):
    """MLP predicting a scalar as a categorical over symexp-spaced bins (reward head, critic).

    The output layer starts at zero, so initial predictions are exactly 0 with a uniform
    distribution; this avoids large, confident reward and value estimates early in training.
    """

    def __init__(self, feature_dim: int, units: int, layers: int, num_bins: int = 255) -> None:
        super().__init__()
        self.trunk = MLP(feature_dim, units, layers)
        self.out = nn.Linear(units, num_bins)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # Derived from num_bins, so not saved with the weights.
        self.register_buffer("bins", symexp_bins(num_bins), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Bin logits (..., num_bins)."""
        return self.out(self.trunk(features))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected value of the predicted distribution (...)."""
        return twohot_decode(F.softmax(logits, dim=-1), self.bins)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Two-hot cross-entropy towards ``targets`` (...)."""
        return twohot_cross_entropy(logits, targets, self.bins)


class ContinueHead(nn.Module):
    """MLP predicting the logit of the episode continuing after the current step."""

    def __init__(self, feature_dim: int, units: int, layers: int) -> None:
        super().__init__()
        self.trunk = MLP(feature_dim, units, layers)
        self.out = nn.Linear(units, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Continue logits with the batch shape of ``features[..., 0]``."""
        return self.out(self.trunk(features)).squeeze(-1)


class Actor(nn.Module):
    """Policy for continuous actions in [-1, 1]: a normal with mean ``tanh(.)`` and std in [min_std, max_std].

    Samples can fall outside [-1, 1]; callers clip them before they reach the environment or
    the dynamics, and score the unclipped sample with ``log_prob``.
    """

    def __init__(
        self, feature_dim: int, action_dim: int, units: int, layers: int, min_std: float, max_std: float
    ) -> None:
        super().__init__()
        self.trunk = MLP(feature_dim, units, layers)
        self.out = nn.Linear(units, 2 * action_dim)
        self.min_std = min_std
        self.max_std = max_std

    def forward(self, features: torch.Tensor) -> torch.distributions.Normal:
        """Action distribution (independent per action dimension)."""
        mean, std = self.out(self.trunk(features)).chunk(2, dim=-1)
        # The +2 starts the std near its maximum so early behaviour explores widely.
        std = (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
        return torch.distributions.Normal(torch.tanh(mean), std, validate_args=False)
