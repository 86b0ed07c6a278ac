"""The networks of DreamerV3 (2024 revision) as small named modules.

- ``Linear`` / ``BlockLinear`` / ``MLP``: layers with the paper's truncated-normal fan-in
  initialisation; ``MLP`` blocks are Linear -> ``NormAct`` (RMSNorm, then SiLU).
- ``ObservationEncoder`` / ``ObservationDecoder``: one CNN over all image observations and one
  symlog MLP over all vector observations, and their mirror images. The decoder's image
  branch starts from a block-linear projection of the deterministic state plus a projection of
  the stochastic state, and ends in a sigmoid.
- ``RSSM``: the recurrent state-space model. Its deterministic state is a block-diagonal GRU
  (``blocks`` independent groups that all see the projected stochastic state and action); its
  stochastic state is ``stoch`` categoricals of ``classes`` classes with a 1% uniform mix and
  straight-through samples.
- ``TwoHotHead`` (reward, critic), ``ContinueHead`` and ``Actor`` (bounded normal for
  continuous actions, unimix categorical for discrete ones).

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
    categorical_sample,
    one_hot,
    straight_through_sample,
    symexp_bins,
    symlog,
    twohot_cross_entropy,
    twohot_decode,
    unimix_log_probs,
)

ObsSpec = dict[str, tuple[tuple[int, ...], str]]
"""Observation key -> (shape, dtype string) of one observation, without batch or time dimensions."""

NORM_EPS = 1e-4
"""Epsilon of every RMSNorm, as in the published configuration."""


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
    if images and len({shape[:2] for shape in images.values()}) > 1:
        sizes = {key: f"{shape[0]}x{shape[1]}" for key, shape in images.items()}
        raise ValueError(f"image observations must share one resolution to share the CNN, got {sizes}: "
                         f"resize them to one size")
    return images, vectors


def trunc_normal_(weight: torch.Tensor, fan_in: int, scale: float = 1.0) -> torch.Tensor:
    """Fill ``weight`` from a normal truncated at two standard deviations with standard deviation
    ``scale / sqrt(fan_in)``: the published initialiser, whose ``scale`` multiplies the weights.

    0.87962566 is the standard deviation of a unit normal truncated to [-2, 2]; dividing by it
    makes the variance of the truncated samples exactly ``1 / fan_in`` before scaling. ``scale = 0``
    gives zeros (the output layers of the reward head and the critic start at zero).
    """
    with torch.no_grad():
        if scale == 0.0:
            return weight.zero_()
        std = scale * math.sqrt(1.0 / fan_in) / 0.87962566103423978
        return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


class Linear(nn.Linear):
    """``nn.Linear`` with the truncated-normal fan-in initialisation; ``outscale`` multiplies the weights."""

    def __init__(self, in_features: int, out_features: int, outscale: float = 1.0) -> None:
        super().__init__(in_features, out_features)
        trunc_normal_(self.weight, in_features, outscale)
        nn.init.zeros_(self.bias)


class BlockLinear(nn.Module):
    """Block-diagonal linear layer: ``(..., G * I) -> (..., G * O)``, each of ``G`` groups mixing only its own inputs.

    Initialised as published: the fan-in is the whole input ``G * I`` (the kernel's shape
    ``(G, I, O)`` counted like a convolution's receptive field), not one block's ``I``.
    """

    def __init__(self, in_features: int, out_features: int, groups: int) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"BlockLinear: {in_features} inputs and {out_features} outputs must both divide "
                             f"into {groups} groups")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, in_features // groups, out_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features))
        trunc_normal_(self.weight, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply each group's weight to its slice of the last dimension."""
        return self._grouped(x, self.weight) + self.bias.to(x.dtype)

    def _grouped(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        grouped = x.reshape(-1, self.groups, weight.shape[1]).transpose(0, 1)  # (G, N, I)
        out = torch.bmm(grouped, weight.to(grouped.dtype)).transpose(0, 1)  # (N, G, O)
        return out.reshape(*batch, -1)


class SharedInputBlockLinear(BlockLinear):
    """A block-diagonal layer whose every group also sees one shared input: group ``g`` maps
    ``concat(own_g, shared)`` to its outputs (the first layer of the block GRU).

    The weights on the shared input are kept as one dense ``(S, G * O)`` matrix, so the layer
    costs one grouped product on ``own`` plus one dense product on ``shared`` and never builds
    ``G`` copies of the shared input. Initialisation uses the fan-in of the published layer, whose
    input is the ``G`` groups' ``concat(own_g, shared)`` flattened: ``G * I_own + G * S``.
    """

    def __init__(self, own_features: int, shared_features: int, out_features: int, groups: int) -> None:
        super().__init__(own_features, out_features, groups)
        fan_in = own_features + groups * shared_features
        trunc_normal_(self.weight, fan_in)
        self.shared_weight = nn.Parameter(torch.empty(shared_features, out_features))
        trunc_normal_(self.shared_weight, fan_in)

    def forward(self, own: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``own`` (..., G * I_own) and ``shared`` (..., S) to (..., G * O)."""
        dense = torch.addmm(self.bias.to(shared.dtype), shared.reshape(-1, shared.shape[-1]),
                            self.shared_weight.to(shared.dtype))
        return dense.reshape(*shared.shape[:-1], -1) + self._grouped(own, self.weight)


class _NormActFunction(torch.autograd.Function):
    """RMSNorm then SiLU over the last dimension of a 2-d input, with a hand-written backward pass.

    Autograd through the composite (square, mean, rsqrt, two products, SiLU) runs about twice as
    many passes over the activations as this, which matters on CPUs where the normalised
    feature maps of the CNN are the largest tensors of an update.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        inverse_rms = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(NORM_EPS))
        normalised = x * inverse_rms
        scaled = normalised * weight
        ctx.save_for_backward(normalised, inverse_rms, weight, scaled)
        return F.silu(scaled)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        normalised, inverse_rms, weight, scaled = ctx.saved_tensors
        grad_scaled = torch.ops.aten.silu_backward(grad, scaled)
        grad_weight = (grad_scaled * normalised).sum(0)
        grad_normalised = grad_scaled.mul_(weight)
        # d(x * r)/dx projected: r * (g - n * mean(g * n)) for n = x * r.
        projection = (grad_normalised * normalised).mean(-1, keepdim=True)
        grad_x = grad_normalised.addcmul_(normalised, projection, value=-1.0).mul_(inverse_rms)
        return grad_x, grad_weight


def _norm_act(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.to(x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _NormActFunction.apply(x, weight)
    return F.silu(F.rms_norm(x, (x.shape[-1],), weight, NORM_EPS))


def _norm_act_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.silu(F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), NORM_EPS))


_norm_act_impl = _norm_act


def compile_norm_act(enabled: bool) -> None:
    """Use a torch.compile'd RMSNorm + SiLU (one fused kernel forward and backward) in every layer, or eager ops."""
    global _norm_act_impl
    _norm_act_impl = torch.compile(_norm_act_reference, dynamic=True) if enabled else _norm_act


class NormAct(nn.Module):
    """RMSNorm with a learned scale, then SiLU, over the last dimension: the normalisation of every layer.

    One function for both, so that a compiled build fuses them (see :func:`compile_norm_act`).
    """

    def __init__(self, units: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise to unit root-mean-square, scale, apply SiLU."""
        # Always 2-d, so a compiled build needs one graph for every layer and batch shape.
        return _norm_act_impl(x.reshape(-1, x.shape[-1]), self.weight).reshape(x.shape)


class ChannelNormAct(NormAct):
    """:class:`NormAct` over the channels of ``(N, C, H, W)`` feature maps (best in channels-last memory)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every pixel's channel vector, scale per channel, apply SiLU."""
        # For a channels-last tensor the permuted view is contiguous.
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MLP(nn.Module):
    """``layers`` blocks of Linear -> RMSNorm -> SiLU with ``units`` outputs each (identity for 0 layers)."""

    def __init__(self, in_features: int, units: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for index in range(layers):
            blocks += [Linear(in_features if index == 0 else units, units), NormAct(units)]
        self.blocks = nn.Sequential(*blocks)
        self.out_features = units if layers else in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks to the last dimension of ``x``."""
        return self.blocks(x)


CNN_STRIDES = ("pool", "conv")
"""How a CNN stage halves the resolution: a full-resolution convolution followed by a 2x2 max
pool (the published default), or a stride-2 convolution (the published ``strided`` option,
a quarter of the arithmetic). The decoder mirrors it with nearest upsampling then a
convolution, or with a stride-2 transposed convolution."""


def cnn_channels(depth: int, mults: tuple[int, ...], stages: int) -> list[int]:
    """Channels per stage: ``depth * mult``, repeating the last multiplier for extra stages."""
    return [depth * mults[min(index, len(mults) - 1)] for index in range(stages)]


def cnn_resolutions(height: int, width: int, stride: str) -> list[tuple[int, int]]:
    """``(height, width)`` after each halving stage, until the smaller side is at most 6 pixels.

    64x64 images take four stages down to 4x4, as in the paper.
    """
    if min(height, width) < 8:
        raise ValueError(f"images need at least 8 pixels per side, got {height}x{width}")
    sizes = []
    while min(height, width) > 6:
        if stride == "pool":
            height, width = height // 2, width // 2
        else:
            height, width = (height + 1) // 2, (width + 1) // 2
        sizes.append((height, width))
    return sizes


class ImageEncoder(nn.Module):
    """CNN from float images ``(N, C, H, W)`` in [-0.5, 0.5] to a flat embedding ``(N, out_features)``."""

    def __init__(self, image_shape: tuple[int, int, int], depth: int, mults: tuple[int, ...], kernel: int,
                 stride: str) -> None:
        super().__init__()
        height, width, channels = image_shape
        resolutions = cnn_resolutions(height, width, stride)
        self.stride = stride
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for out_channels in cnn_channels(depth, mults, len(resolutions)):
            conv = nn.Conv2d(channels, out_channels, kernel, stride=1 if stride == "pool" else 2,
                             padding=kernel // 2)
            trunc_normal_(conv.weight, channels * kernel * kernel)
            nn.init.zeros_(conv.bias)
            self.convs.append(conv)
            self.norms.append(ChannelNormAct(out_channels))
            channels = out_channels
        self.out_features = channels * math.prod(resolutions[-1])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Embed a batch of channel-first images."""
        x = image
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            if self.stride == "pool":
                x = F.max_pool2d(x, 2)
            x = norm(x)
        return x.flatten(1)


class ImageDecoder(nn.Module):
    """From latent features to channel-first images ``(N, C, H, W)`` in [0, 1] (sigmoid output).

    The first feature map comes from a block-linear projection of the deterministic state (in
    ``bspace`` groups, each filling its own channels) plus an MLP projection of the stochastic
    state, as in the 2024 DreamerV3. Then every encoder stage is mirrored.
    """

    def __init__(self, deter: int, stoch_flat: int, units: int, image_shape: tuple[int, int, int], depth: int,
                 mults: tuple[int, ...], kernel: int, stride: str, bspace: int) -> None:
        super().__init__()
        height, width, channels = image_shape
        resolutions = cnn_resolutions(height, width, stride)
        stage_channels = cnn_channels(depth, mults, len(resolutions))
        self.stride = stride
        self.first_shape = (stage_channels[-1], *resolutions[-1])
        first_size = math.prod(self.first_shape)
        # Small models whose channels do not divide into bspace groups use the largest group count that fits.
        bspace = math.gcd(bspace, stage_channels[-1], deter) if bspace else 0
        self.bspace = bspace
        if bspace:
            self.deter_projection = BlockLinear(deter, first_size, bspace)
            self.stoch_projection = nn.Sequential(Linear(stoch_flat, 2 * units), NormAct(2 * units),
                                                  Linear(2 * units, first_size))
        else:
            self.projection = Linear(deter + stoch_flat, first_size)
        self.first_norm = ChannelNormAct(stage_channels[-1])
        # Stage i maps resolution i (channels i) to resolution i - 1 (channels i - 1); the last one makes pixels.
        targets = [(height, width)] + resolutions[:-1]
        out_channels = [channels] + stage_channels[:-1]
        self.sizes = targets[::-1]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for index in range(len(resolutions) - 1, -1, -1):
            in_channels = stage_channels[index]
            out = out_channels[index]
            if stride == "pool":
                conv = nn.Conv2d(in_channels, out, kernel, padding=kernel // 2)
                fan_in = in_channels * kernel * kernel
            else:
                in_h, in_w = resolutions[index]
                target_h, target_w = targets[index]
                conv = nn.ConvTranspose2d(in_channels, out, kernel, stride=2, padding=kernel // 2,
                                          output_padding=(target_h - (2 * in_h - 1), target_w - (2 * in_w - 1)))
                fan_in = in_channels * kernel * kernel // 4
            trunc_normal_(conv.weight, fan_in)
            nn.init.zeros_(conv.bias)
            self.convs.append(conv)
            if index > 0:
                self.norms.append(ChannelNormAct(out))

    def forward(self, deter: torch.Tensor, stoch_flat: torch.Tensor) -> torch.Tensor:
        """Decode ``(N, deter)`` and ``(N, stoch * classes)`` into ``(N, C, H, W)`` images."""
        channels, height, width = self.first_shape
        if self.bspace:
            # Group g of the projection fills channels [g * C/G, (g + 1) * C/G) at every position.
            x0 = self.deter_projection(deter).reshape(-1, self.bspace, height, width, channels // self.bspace)
            x0 = x0.permute(0, 2, 3, 1, 4).reshape(-1, height, width, channels)
            x1 = self.stoch_projection(stoch_flat).reshape(-1, height, width, channels)
            x = (x0 + x1).permute(0, 3, 1, 2)
        else:
            x = self.projection(torch.cat([deter, stoch_flat], -1)).reshape(-1, height, width, channels)
            x = x.permute(0, 3, 1, 2)
        x = self.first_norm(x)
        for index, conv in enumerate(self.convs):
            if self.stride == "pool":
                x = F.interpolate(x, size=self.sizes[index], mode="nearest")
            x = conv(x)
            if index < len(self.norms):
                x = self.norms[index](x)
        return torch.sigmoid(x)


def images_to_float(images: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Concatenate uint8 images ``(..., H, W, C_i)`` along channels into one channels-last float batch in [-0.5, 0.5].

    Returns the ``(N, sum C_i, H, W)`` tensor (channels-last in memory) and the batch shape.
    """
    image = images[0] if len(images) == 1 else torch.cat(images, dim=-1)
    batch = image.shape[:-3]
    # (N, H, W, C) permuted to (N, C, H, W) is already channels-last in memory: no copy before the float cast.
    pixels = image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2)
    return pixels.float().div_(255.0).sub_(0.5), batch


class ObservationEncoder(nn.Module):
    """Embeds a dict of observations: one CNN over all image keys, one symlog MLP over all vector keys.

    Inputs keep their batch dimensions: ``obs[key]`` has shape ``batch + shape`` (e.g.
    ``(B, T, H, W, C)`` uint8 images); the output is ``batch + (out_features,)``.
    """

    def __init__(self, obs_spec: ObsSpec, units: int, layers: int, cnn_depth: int, cnn_mults: tuple[int, ...],
                 cnn_kernel: int, cnn_stride: str) -> None:
        super().__init__()
        self.image_shapes, self.vector_shapes = split_obs_spec(obs_spec)
        self.image_encoder = None
        out = 0
        if self.image_shapes:
            height, width = next(iter(self.image_shapes.values()))[:2]
            channels = sum(shape[2] for shape in self.image_shapes.values())
            self.image_encoder = ImageEncoder((height, width, channels), cnn_depth, cnn_mults, cnn_kernel,
                                              cnn_stride)
            out += self.image_encoder.out_features
        self.vector_encoder = None
        if self.vector_shapes:
            vector_size = sum(math.prod(shape) for shape in self.vector_shapes.values())
            self.vector_encoder = MLP(vector_size, units, layers)
            out += self.vector_encoder.out_features
        self.out_features = out

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embed observations with arbitrary leading batch dimensions."""
        parts = []
        if self.image_encoder is not None:
            pixels, batch = images_to_float([obs[key] for key in self.image_shapes])
            parts.append(self.image_encoder(pixels).reshape(*batch, -1))
        if self.vector_encoder is not None:
            vectors = [
                obs[key].reshape(*obs[key].shape[: obs[key].dim() - len(shape)], -1).float()
                for key, shape in self.vector_shapes.items()
            ]
            parts.append(self.vector_encoder(symlog(torch.cat(vectors, dim=-1))))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class ObservationDecoder(nn.Module):
    """Reconstructs every observation from the latent state and scores the reconstruction.

    Images are predicted as pixels in [0, 1] (squared error summed over pixels); vectors are
    predicted in symlog space (squared error against ``symlog(target)``).
    """

    def __init__(self, obs_spec: ObsSpec, deter: int, stoch_flat: int, units: int, layers: int, cnn_depth: int,
                 cnn_mults: tuple[int, ...], cnn_kernel: int, cnn_stride: str, bspace: int) -> None:
        super().__init__()
        self.image_shapes, self.vector_shapes = split_obs_spec(obs_spec)
        self.image_decoder = None
        if self.image_shapes:
            height, width = next(iter(self.image_shapes.values()))[:2]
            channels = sum(shape[2] for shape in self.image_shapes.values())
            self.image_decoder = ImageDecoder(deter, stoch_flat, units, (height, width, channels), cnn_depth,
                                              cnn_mults, cnn_kernel, cnn_stride, bspace)
        self.vector_sizes = {key: math.prod(shape) for key, shape in self.vector_shapes.items()}
        if self.vector_shapes:
            self.vector_trunk = MLP(deter + stoch_flat, units, layers)
            self.vector_out = Linear(self.vector_trunk.out_features, sum(self.vector_sizes.values()))

    def forward(self, deter: torch.Tensor, stoch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions for every key, shaped ``batch + shape`` (images in [0, 1], vectors in symlog space)."""
        batch = deter.shape[:-1]
        predictions = {}
        if self.image_decoder is not None:
            images = self._images(deter, stoch).permute(0, 2, 3, 1)
            offset = 0
            for key, shape in self.image_shapes.items():
                predictions[key] = images[..., offset: offset + shape[2]].reshape(*batch, *shape)
                offset += shape[2]
        predictions.update(self._vectors(deter, stoch))
        return predictions

    def loss(self, deter: torch.Tensor, stoch: torch.Tensor, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-key reconstruction loss: summed over an observation's entries, averaged over batch dimensions."""
        steps = deter[..., 0].numel()
        losses = {}
        if self.image_decoder is not None:
            # Compared channels-last, the layout of both the prediction and the uint8 target, so
            # the arithmetic runs over contiguous memory.
            prediction = self._images(deter, stoch).permute(0, 2, 3, 1).float()
            offset = 0
            for key, shape in self.image_shapes.items():
                target = obs[key].reshape(-1, *shape).float().div_(255.0)
                losses[key] = F.mse_loss(prediction[..., offset: offset + shape[2]], target, reduction="sum") / steps
                offset += shape[2]
        for key, prediction in self._vectors(deter, stoch).items():
            target = symlog(obs[key].float())
            losses[key] = F.mse_loss(prediction.float(), target, reduction="sum") / steps
        return losses

    def _images(self, deter: torch.Tensor, stoch: torch.Tensor) -> torch.Tensor:
        return self.image_decoder(deter.reshape(-1, deter.shape[-1]), stoch.reshape(-1, math.prod(stoch.shape[-2:])))

    def _vectors(self, deter: torch.Tensor, stoch: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.vector_shapes:
            return {}
        batch = deter.shape[:-1]
        features = torch.cat([deter, stoch.flatten(-2)], dim=-1)
        parts = self.vector_out(self.vector_trunk(features)).split(list(self.vector_sizes.values()), dim=-1)
        return {key: part.reshape(*batch, *shape) for (key, shape), part in zip(self.vector_shapes.items(), parts)}


class LatentState(NamedTuple):
    """RSSM state: deterministic ``deter`` (..., deter), one-hot stochastic ``stoch`` (..., stoch, classes)."""

    deter: torch.Tensor
    stoch: torch.Tensor


def _dense_block(in_features: int, units: int) -> nn.Sequential:
    return nn.Sequential(Linear(in_features, units), NormAct(units))


def squash_action(action: torch.Tensor) -> torch.Tensor:
    """Scale an action vector down so no entry exceeds 1 in magnitude (``a / max(1, |a|)`` per entry)."""
    return action / action.detach().abs().clamp(min=1.0)


class RSSM(nn.Module):
    """Recurrent state-space model with a block-diagonal GRU.

    ``h_t = f(h_{t-1}, z_{t-1}, a_{t-1})``; ``z_t ~ q(z | h_t, x_t)`` when observing, ``p(z | h_t)``
    when imagining.

    The core projects ``h``, ``z`` and ``a`` to ``hidden`` units each (Linear, RMSNorm, SiLU). Each
    of ``blocks`` groups of ``h`` is concatenated with all three projections and passed through
    ``dynlayers`` block-linear layers (RMSNorm, SiLU) and a block-linear layer producing the GRU's
    reset, candidate and update gates; the update gate is biased towards keeping the state
    (``sigmoid(u - 1)``). The prior is ``imglayers`` dense layers on ``h``; the posterior is
    ``obslayers`` dense layers on ``[h, embedding]``. Episodes start from a learned initial
    state: ``tanh`` of a parameter for ``h`` (zero at initialisation) and the prior's mode there
    for ``z``.
    """

    def __init__(self, embed_dim: int, action_dim: int, deter: int, hidden: int, stoch: int, classes: int,
                 unimix: float, blocks: int, dynlayers: int = 1, imglayers: int = 2, obslayers: int = 1) -> None:
        super().__init__()
        if deter % blocks:
            raise ValueError(f"deter {deter} must divide into {blocks} GRU blocks: change deter or blocks")
        self.deter = deter
        self.stoch = stoch
        self.classes = classes
        self.unimix = unimix
        self.blocks = blocks
        self.initial_deter = nn.Parameter(torch.zeros(deter))
        self.deter_in = _dense_block(deter, hidden)
        self.stoch_in = _dense_block(stoch * classes, hidden)
        self.action_in = _dense_block(action_dim, hidden)
        self.dyn_layers = nn.ModuleList()
        for index in range(dynlayers):
            linear = SharedInputBlockLinear(deter, 3 * hidden, deter, blocks) if index == 0 else \
                BlockLinear(deter, deter, blocks)
            self.dyn_layers.append(nn.ModuleDict({"linear": linear, "norm": NormAct(deter)}))
        self.gates = BlockLinear(deter, 3 * deter, blocks) if dynlayers else \
            SharedInputBlockLinear(deter, 3 * hidden, 3 * deter, blocks)
        self.prior_net = nn.Sequential(*[_dense_block(deter if i == 0 else hidden, hidden) for i in range(imglayers)],
                                       Linear(hidden if imglayers else deter, stoch * classes))
        self.posterior_hidden = nn.Sequential(
            *[_dense_block(deter + embed_dim if i == 0 else hidden, hidden) for i in range(obslayers)])
        self.posterior_out = Linear(hidden if obslayers else deter + embed_dim, stoch * classes)
        self.feature_dim = deter + stoch * classes

    def features(self, state: LatentState) -> torch.Tensor:
        """The input of the actor and critic heads: ``concat(h, flatten(z))``."""
        return torch.cat([state.deter, state.stoch.flatten(-2)], dim=-1)

    def initial_state(self, batch_size: int) -> LatentState:
        """The learned initial state, repeated for ``batch_size`` sequences."""
        deter = torch.tanh(self.initial_deter)[None]
        mode = self.prior_logits(deter).argmax(-1)
        stoch = one_hot(mode, self.classes, deter.dtype)
        return LatentState(deter.expand(batch_size, -1), stoch.expand(batch_size, -1, -1))

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        """Logits (..., stoch, classes) of the prior ``p(z | h)``."""
        return self.prior_net(deter).unflatten(-1, (self.stoch, self.classes))

    def prior_log_probs(self, deter: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., stoch, classes) of the prior, mixed with ``unimix`` of uniform."""
        return unimix_log_probs(self.prior_logits(deter).float(), self.unimix)

    def action_input(self, action: torch.Tensor) -> torch.Tensor:
        """The core's projection of an action; precomputed for whole sequences when the actions are known."""
        return self.action_in(squash_action(action))

    def posterior_input(self, embed: torch.Tensor) -> torch.Tensor:
        """The embedding's share of the posterior's first layer, precomputable for whole sequences."""
        if not len(self.posterior_hidden):
            return embed
        first = self.posterior_hidden[0][0]
        return F.linear(embed, first.weight[:, self.deter:])

    def posterior_log_probs(self, deter: torch.Tensor, embed_input: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., stoch, classes) of ``q(z | h, x)`` from ``posterior_input(embedding)``."""
        if len(self.posterior_hidden):
            first = self.posterior_hidden[0]
            # Linear on [h, e] split into its h part plus the precomputed e part.
            x = F.linear(deter, first[0].weight[:, : self.deter], first[0].bias) + embed_input
            x = first[1](x)
            for block in self.posterior_hidden[1:]:
                x = block(x)
        else:
            x = torch.cat([deter, embed_input], -1)
        logits = self.posterior_out(x).unflatten(-1, (self.stoch, self.classes))
        return unimix_log_probs(logits.float(), self.unimix)

    def core(self, deter: torch.Tensor, stoch: torch.Tensor, action_input: torch.Tensor) -> torch.Tensor:
        """The block GRU: the next ``h`` from ``h``, ``z`` and ``action_input(a)``."""
        groups = self.blocks
        batch = deter.shape[:-1]
        shared = torch.cat([self.deter_in(deter), self.stoch_in(stoch.flatten(-2)), action_input], -1)
        # Every block sees its own slice of h and all of the shared projections.
        if self.dyn_layers:
            first = self.dyn_layers[0]
            x = first["norm"](first["linear"](deter, shared))
            for layer in self.dyn_layers[1:]:
                x = layer["norm"](layer["linear"](x))
            gates = self.gates(x)
        else:
            gates = self.gates(deter, shared)
        gates = gates.reshape(*batch, groups, 3, -1)
        reset, candidate, update = gates.unbind(-2)
        candidate = torch.tanh(torch.sigmoid(reset) * candidate).reshape(*batch, -1)
        update = torch.sigmoid(update - 1.0).reshape(*batch, -1)
        return torch.lerp(deter, candidate.to(deter.dtype), update.to(deter.dtype))

    def imagine_step(self, state: LatentState, action: torch.Tensor) -> LatentState:
        """One step of the learned dynamics without an observation (sampled from the prior)."""
        deter = self.core(state.deter, state.stoch, self.action_input(action))
        return LatentState(deter, straight_through_sample(self.prior_log_probs(deter)).to(deter.dtype))

    def observe_step(self, state: LatentState, action: torch.Tensor, embed: torch.Tensor
                     ) -> tuple[LatentState, torch.Tensor]:
        """One step filtered with an embedded observation; returns the state and posterior log-probabilities."""
        deter = self.core(state.deter, state.stoch, self.action_input(action))
        posterior = self.posterior_log_probs(deter, self.posterior_input(embed))
        return LatentState(deter, straight_through_sample(posterior).to(deter.dtype)), posterior

    def observe(self, embed: torch.Tensor, previous_action: torch.Tensor, is_first: torch.Tensor,
                start: LatentState | None = None) -> tuple[LatentState, torch.Tensor, torch.Tensor]:
        """Filter whole sequences ``(B, T, ...)``.

        ``previous_action[:, t]`` is the action taken before observation ``t``. Where
        ``is_first[:, t]`` is true the state is reset to the initial state and the previous
        action to zeros before stepping, so episodes inside a sequence do not leak into each
        other. ``start`` (``(B, deter)``, ``(B, stoch, classes)``) is the state before step 0,
        continued from where ``is_first[:, 0]`` is false (with ``previous_action[:, 0]`` as the
        action taken in it); without it every sequence starts from the initial state. Returns the
        posterior states, posterior and prior log-probabilities.
        """
        batch, length = embed.shape[:2]
        initial = self.initial_state(batch)
        state = initial if start is None else LatentState(start.deter.to(initial.deter.dtype),
                                                          start.stoch.to(initial.stoch.dtype))
        first = is_first.unsqueeze(-1)
        # Everything that does not depend on the recurrence is computed for all steps at once.
        action_input = self.action_input(previous_action * (~first).to(previous_action.dtype))
        embed_input = self.posterior_input(embed)
        keep = (~first).to(initial.deter.dtype)
        deters, stochs, posteriors = [], [], []
        for step in range(length):
            keep_t = keep[:, step]
            state = LatentState(
                torch.lerp(initial.deter, state.deter.to(keep_t.dtype), keep_t),
                torch.lerp(initial.stoch, state.stoch.to(keep_t.dtype), keep_t[..., None]),
            )
            deter = self.core(state.deter, state.stoch, action_input[:, step])
            posterior = self.posterior_log_probs(deter, embed_input[:, step])
            state = LatentState(deter, straight_through_sample(posterior).to(deter.dtype))
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
        self.out = Linear(self.trunk.out_features, num_bins, outscale=0.0)
        # Derived from num_bins, so not saved with the weights.
        self.register_buffer("bins", symexp_bins(num_bins), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Bin logits (..., num_bins) in float32."""
        return self.out(self.trunk(features)).float()

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected value of the predicted distribution (...)."""
        return twohot_decode(F.softmax(logits, dim=-1), self.bins)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Two-hot cross-entropy towards ``targets`` (...)."""
        return twohot_cross_entropy(logits, targets.float(), self.bins)


class ContinueHead(nn.Module):
    """MLP predicting the logit of the episode continuing after the current step."""

    def __init__(self, feature_dim: int, units: int, layers: int) -> None:
        super().__init__()
        self.trunk = MLP(feature_dim, units, layers)
        self.out = Linear(self.trunk.out_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Continue logits (float32) with the batch shape of ``features[..., 0]``."""
        return self.out(self.trunk(features)).squeeze(-1).float()


class ActionDistribution:
    """The actor's output: a bounded normal (continuous) or a unimix categorical over one-hot actions (discrete).

    ``sample()`` returns actions in the layout the environment gets (continuous: unclipped
    samples, clip before use; discrete: one-hot vectors); ``log_prob(a)`` and ``entropy()``
    sum over the action dimensions, shape ``batch``.
    """

    def __init__(self, out: torch.Tensor, discrete: bool, min_std: float, max_std: float, unimix: float) -> None:
        self.discrete = discrete
        out = out.float()
        if discrete:
            self.log_probs = unimix_log_probs(out, unimix)
        else:
            mean, std = out.chunk(2, dim=-1)
            self.mean = torch.tanh(mean)
            # The +2 starts the std near its maximum so early behaviour explores widely.
            self.std = (max_std - min_std) * torch.sigmoid(std + 2.0) + min_std

    def sample(self) -> torch.Tensor:
        """One action per batch entry."""
        if self.discrete:
            return one_hot(categorical_sample(self.log_probs), self.log_probs.shape[-1])
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> torch.Tensor:
        """The most likely action (continuous: the mean; discrete: one-hot of the likeliest class)."""
        if self.discrete:
            return one_hot(self.log_probs.argmax(-1), self.log_probs.shape[-1])
        return self.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of ``action`` summed over action dimensions."""
        if self.discrete:
            return (action * self.log_probs).sum(-1)
        return (-0.5 * ((action - self.mean) / self.std).square() - self.std.log()
                - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Entropy summed over action dimensions."""
        if self.discrete:
            return -(self.log_probs.exp() * self.log_probs).sum(-1)
        return (0.5 + 0.5 * math.log(2 * math.pi) + self.std.log()).sum(-1)

    def spread(self) -> torch.Tensor:
        """Mean standard deviation (continuous) or mean largest-class probability (discrete), for metrics."""
        if self.discrete:
            return self.log_probs.exp().amax(-1).mean()
        return self.std.mean()


class Actor(nn.Module):
    """Policy head: continuous actions in [-1, 1] (normal with mean ``tanh(.)``, std in [min_std, max_std])
    or discrete one-hot actions (categorical with ``unimix`` of uniform).

    Continuous samples can fall outside [-1, 1]; callers clip them before they reach the
    environment or the dynamics, and score the unclipped sample with ``log_prob``.
    """

    def __init__(self, feature_dim: int, action_dim: int, units: int, layers: int, min_std: float, max_std: float,
                 *, discrete: bool = False, unimix: float = 0.01, outscale: float = 0.01) -> None:
        super().__init__()
        self.discrete = discrete
        self.trunk = MLP(feature_dim, units, layers)
        self.out = Linear(self.trunk.out_features, action_dim if discrete else 2 * action_dim, outscale=outscale)
        self.min_std = min_std
        self.max_std = max_std
        self.unimix = unimix

    def forward(self, features: torch.Tensor) -> ActionDistribution:
        """Action distribution (independent per action dimension when continuous)."""
        return self.distribution(self.output(features))

    def output(self, features: torch.Tensor) -> torch.Tensor:
        """The raw output layer: means and std parameters (continuous) or logits (discrete)."""
        return self.out(self.trunk(features))

    def distribution(self, output: torch.Tensor) -> ActionDistribution:
        """The action distribution of raw outputs from :meth:`output`."""
        return ActionDistribution(output, self.discrete, self.min_std, self.max_std, self.unimix)
