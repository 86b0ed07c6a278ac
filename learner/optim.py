"""The DreamerV3 optimiser: LaProp with adaptive gradient clipping and a linear warm-up.

Hafner et al., "Mastering Diverse Domains through World Models" (2023, revised 2024),
train every network with LaProp (Ziyin et al., "LaProp: Separating Momentum and
Adaptivity in Adam", 2020) after adaptive gradient clipping (AGC, Brock et al.,
"High-Performance Large-Scale Image Recognition Without Normalization", 2021).

For each parameter tensor ``p`` with gradient ``g``, at step ``t = 1, 2, ...``:

1. AGC, unit-wise per tensor (Frobenius norms of the whole tensor):
   ``g <- g * min(1, agc * max(||p||, agc_floor) / max(||g||, tiny))``.
2. RMS normalisation (LaProp): ``nu <- beta2 * nu + (1 - beta2) * g**2`` and
   ``u = g / (sqrt(nu / (1 - beta2**t)) + eps)``.
3. Momentum on the *normalised* update (this is what distinguishes LaProp from Adam,
   which averages the raw gradient): ``m <- beta1 * m + (1 - beta1) * u`` and
   ``m_hat = m / (1 - beta1**t)``.
4. ``p <- p - lr_t * m_hat`` with the linear warm-up ``lr_t = lr * min(1, t / warmup)``,
   optionally preceded by decoupled weight decay ``p <- p - lr_t * weight_decay * p``.

The step works on whole groups of tensors at once with ``torch._foreach_*`` kernels and never
synchronises with the device, so it is cheap on CPU and does not stall CUDA streams.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["LaProp"]


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"LaProp: {name} = {value!r} must be {allowed}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _validate(options: dict[str, Any]) -> None:
    """Raise a one-line ``ValueError`` for the first option outside its allowed range."""
    lr = options["lr"]
    _check("lr", lr, _is_number(lr) and lr > 0 and math.isfinite(lr), "> 0")
    betas = options["betas"]
    _check("betas", betas, isinstance(betas, (tuple, list)) and len(betas) == 2, "a pair (beta1, beta2)")
    for index, beta in enumerate(betas):
        _check(f"betas[{index}]", beta, _is_number(beta) and 0.0 <= beta < 1.0, "in [0, 1)")
    eps = options["eps"]
    _check("eps", eps, _is_number(eps) and 0.0 <= eps < math.inf, ">= 0")
    agc = options["agc"]
    _check("agc", agc, agc is None or (_is_number(agc) and 0.0 <= agc < math.inf), ">= 0 (0 or None disables it)")
    floor = options["agc_floor"]
    _check("agc_floor", floor, _is_number(floor) and 0.0 <= floor < math.inf, ">= 0")
    warmup = options["warmup"]
    _check("warmup", warmup, isinstance(warmup, numbers.Integral) and not isinstance(warmup, bool) and warmup >= 0,
           "an integer >= 0 (0 disables it)")
    decay = options["weight_decay"]
    _check("weight_decay", decay, _is_number(decay) and 0.0 <= decay < math.inf, ">= 0")


class LaProp(torch.optim.Optimizer):
    """LaProp with adaptive gradient clipping and linear learning-rate warm-up (DreamerV3).

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        lr: peak learning rate, reached after ``warmup`` steps.
        betas: ``(beta1, beta2)``: decay of the momentum and of the squared-gradient average.
        eps: added to the RMS denominator.
        agc: AGC clip ratio of gradient norm to parameter norm; ``0`` or ``None`` disables AGC.
        agc_floor: lower bound on the parameter norm used by AGC (lets zero-initialised
            tensors such as biases still move).
        warmup: number of steps of the linear learning-rate warm-up; ``0`` disables it.
        weight_decay: decoupled weight decay, scaled by the (warmed-up) learning rate.

    The step count is an ``int`` per parameter in ``state[p]["step"]``, next to the moments
    ``"m"`` and ``"nu"``, so ``state_dict()`` / ``load_state_dict()`` resume the warm-up and the
    bias corrections where they stopped. Parameters whose ``grad`` is ``None`` are skipped and
    their step count does not advance.

    After each :meth:`step`, ``self.last_stats`` holds 0-dim tensors (on the device of the
    first updated parameter, not synchronised; call ``.item()`` when you need the numbers):
    ``"grad_norm"`` (global norm of the raw gradients, before clipping), ``"clipped_fraction"``
    (fraction of the updated tensors whose gradient AGC scaled down), ``"update_norm"`` (global
    norm of the change applied to the parameters) and ``"lr"`` (the warmed-up learning rate of
    the first updated parameter group). It is empty after a step in which no parameter had a
    gradient.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        agc: float | None = 0.3,
        agc_floor: float = 1e-3,
        warmup: int = 1000,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, agc=agc, agc_floor=agc_floor, warmup=warmup, weight_decay=weight_decay
        )
        _validate(defaults)
        super().__init__(params, defaults)
        self.last_stats: dict[str, torch.Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; its own options are validated like the constructor's."""
        _validate({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @staticmethod
    def scheduled_lr(lr: float, warmup: int, step: int) -> float:
        """The warmed-up learning rate ``lr * min(1, step / warmup)`` of step ``step`` (from 1)."""
        if warmup <= 0:
            return float(lr)
        return float(lr) * min(1.0, step / warmup)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Bucket the tensors so that each bucket can go through the foreach kernels together:
        # same group (options), device, dtype and step count (normally one bucket per group).
        buckets: list[tuple[dict[str, Any], int, list[torch.Tensor], list[torch.Tensor],
                            list[torch.Tensor], list[torch.Tensor]]] = []
        for group in self.param_groups:
            by_key: dict[tuple[torch.device, torch.dtype, int], tuple] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LaProp does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["nu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1
                key = (p.device, p.dtype, state["step"])
                if key not in by_key:
                    by_key[key] = (group, state["step"], [], [], [], [])
                bucket = by_key[key]
                bucket[2].append(p)
                bucket[3].append(p.grad)
                bucket[4].append(state["m"])
                bucket[5].append(state["nu"])
            buckets.extend(by_key.values())

        if not buckets:
            self.last_stats = {}
            return loss

        stats_device = buckets[0][2][0].device
        grad_sq = torch.zeros((), dtype=torch.float32, device=stats_device)
        update_sq = torch.zeros((), dtype=torch.float32, device=stats_device)
        clipped = torch.zeros((), dtype=torch.float32, device=stats_device)
        count = 0
        first_lr = None
        for group, step, params, grads, ms, nus in buckets:
            beta1, beta2 = group["betas"]
            lr_t = self.scheduled_lr(group["lr"], group["warmup"], step)
            if first_lr is None:
                first_lr = lr_t
            count += len(params)

            # 1. Adaptive gradient clipping, one scale factor per tensor (never in place on .grad).
            grad_norms = torch.stack(torch._foreach_norm(grads))
            grad_sq += grad_norms.float().square().sum().to(stats_device)
            agc = group["agc"]
            if agc:
                param_norms = torch.stack(torch._foreach_norm(params))
                limit = param_norms.clamp_min(group["agc_floor"]) * agc
                tiny = torch.finfo(grad_norms.dtype).tiny
                scale = (limit / grad_norms.clamp_min(tiny)).clamp_max(1.0)
                clipped += (grad_norms > limit).sum().float().to(stats_device)
                grads = torch._foreach_mul(grads, list(scale.unbind(0)))

            # 2. + 3. RMS normalisation and momentum, fused into one pass over m. With
            # c2 = sqrt(1 - beta2**t): u = g / (sqrt(nu) / c2 + eps) = c2 * g / (sqrt(nu) + c2 * eps),
            # so m = beta1 * m + (1 - beta1) * u is an addcdiv with value (1 - beta1) * c2.
            torch._foreach_mul_(nus, beta2)
            torch._foreach_addcmul_(nus, grads, grads, value=1.0 - beta2)
            c2 = math.sqrt(1.0 - beta2**step)
            denom = torch._foreach_sqrt(nus)
            torch._foreach_add_(denom, group["eps"] * c2)
            torch._foreach_mul_(ms, beta1)
            torch._foreach_addcdiv_(ms, grads, denom, value=(1.0 - beta1) * c2)
            del denom, grads

            # 4. Decoupled weight decay, then p -= lr_t * m / (1 - beta1**t).
            step_size = lr_t / (1.0 - beta1**step)
            decay = lr_t * group["weight_decay"]
            if decay:
                updates = torch._foreach_mul(ms, step_size)
                torch._foreach_add_(updates, params, alpha=decay)
                update_norms = torch.stack(torch._foreach_norm(updates))
                torch._foreach_sub_(params, updates)
                del updates
            else:
                update_norms = torch.stack(torch._foreach_norm(ms)) * step_size
                torch._foreach_add_(params, ms, alpha=-step_size)
            update_sq += update_norms.float().square().sum().to(stats_device)

        self.last_stats = {
            "grad_norm": grad_sq.sqrt(),
            "clipped_fraction": clipped / count,
            "update_norm": update_sq.sqrt(),
            "lr": torch.full((), first_lr, dtype=torch.float32, device=stats_device),
        }
        return loss
