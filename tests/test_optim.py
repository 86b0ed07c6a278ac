"""Specification of the DreamerV3 optimiser (LaProp + AGC + warm-up) in learner.optim.

Known answers come from hand calculation or from ``reference_steps`` below: a plain
per-tensor float64 transcription of the algorithm, independent of the foreach implementation.
"""

import io
import math

import pytest
import torch

from learner.optim import LaProp


def reference_steps(params, grads_per_step, lr, warmup, beta1=0.9, beta2=0.999, eps=1e-20,
                    agc=0.3, floor=1e-3, weight_decay=0.0):
    """Run the algorithm step by step in float64, one tensor at a time.

    Returns the final parameters and, per step, the list of per-tensor "was clipped" flags,
    the global gradient norm before clipping and the global norm of the applied update.
    """
    params = [p.detach().double().clone() for p in params]
    ms = [torch.zeros_like(p) for p in params]
    nus = [torch.zeros_like(p) for p in params]
    history = []
    for t, grads in enumerate(grads_per_step, start=1):
        lr_t = lr * min(1.0, t / warmup) if warmup else lr
        flags, grad_sq, update_sq = [], 0.0, 0.0
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.double()
            grad_norm = float(torch.sqrt((g * g).sum()))
            grad_sq += grad_norm**2
            if agc:
                param_norm = float(torch.sqrt((p * p).sum()))
                limit = agc * max(param_norm, floor)
                factor = min(1.0, limit / max(grad_norm, 1e-300))
                flags.append(factor < 1.0)
                g = g * factor
            nus[i] = beta2 * nus[i] + (1 - beta2) * g * g
            nu_hat = nus[i] / (1 - beta2**t)
            u = g / (torch.sqrt(nu_hat) + eps)
            ms[i] = beta1 * ms[i] + (1 - beta1) * u
            m_hat = ms[i] / (1 - beta1**t)
            update = lr_t * weight_decay * p + lr_t * m_hat
            update_sq += float((update * update).sum())
            params[i] = p - update
        history.append((flags, math.sqrt(grad_sq), math.sqrt(update_sq)))
    return params, history


def make_grads(shapes, scales, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=gen, dtype=torch.float64) * scale for shape, scale in zip(shapes, scales)]
            for _ in range(steps)]


def run_optimiser(params, grads_per_step, **kwargs):
    optimiser = LaProp(params, **kwargs)
    stats = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype)
        optimiser.step()
        stats.append({k: v.item() for k, v in optimiser.last_stats.items()})
    return optimiser, stats


@pytest.mark.parametrize("agc", [0.3, 0.0])
def test_first_step_moves_each_element_by_lr_in_the_sign_of_its_gradient(agc):
    # Bias correction makes nu_hat = g**2 and m_hat = u = g / |g| at t = 1, so the update is
    # exactly lr * sign(g); AGC only rescales the whole tensor, which the normalisation undoes.
    p = torch.zeros(6, requires_grad=True)
    grad = torch.tensor([0.5, -2.0, 0.0, 1e-6, -3e3, 7.0])
    p.grad = grad.clone()
    optimiser = LaProp([p], lr=1e-3, warmup=0, agc=agc)
    assert optimiser.step() is None
    expected = torch.tensor([-1e-3, 1e-3, 0.0, -1e-3, 1e-3, -1e-3])
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0.0)
    assert torch.equal(p.grad, grad), "the optimiser must not modify .grad"

    stats = optimiser.last_stats
    assert all(isinstance(v, torch.Tensor) for v in stats.values())
    assert stats["lr"].item() == pytest.approx(1e-3)
    assert stats["grad_norm"].item() == pytest.approx(float(grad.norm()), rel=1e-6)
    assert stats["update_norm"].item() == pytest.approx(1e-3 * math.sqrt(5), rel=1e-6)
    # A zero parameter has the AGC limit 0.3 * 1e-3, far below ||grad||.
    assert stats["clipped_fraction"].item() == (1.0 if agc else 0.0)


def test_first_step_exact_on_float64_matrix_with_nonzero_parameter():
    p = torch.tensor([[1.0, -2.0, 3.0], [0.25, 0.0, -0.5]], dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([[1e-3, -4.0, 0.0], [-0.2, 9.0, 1e-8]], dtype=torch.float64)
    LaProp([p], lr=4e-5, warmup=0).step()
    expected = torch.tensor([[1.0 - 4e-5, -2.0 + 4e-5, 3.0], [0.25 + 4e-5, -4e-5, -0.5 - 4e-5]],
                            dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=0.0, atol=1e-15)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_steps_match_float64_reference_with_agc_on_one_tensor(dtype, tol, weight_decay):
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.1,   # small weights
            torch.randn(7, generator=gen, dtype=torch.float64)]            # large weights
    # Big gradients on the first tensor (AGC clips them), small on the second (untouched).
    grads = make_grads([(4, 5), (7,)], [10.0, 0.01], steps=5, seed=2)
    kwargs = dict(lr=1e-2, warmup=3, weight_decay=weight_decay)

    expected, history = reference_steps(init, grads, **kwargs)
    params = [x.to(dtype).requires_grad_() for x in init]
    _, stats = run_optimiser(params, grads, **kwargs)

    for (flags, grad_norm, update_norm), got in zip(history, stats):
        assert flags == [True, False], "the test data must clip exactly the first tensor"
        assert got["clipped_fraction"] == 0.5
        assert got["grad_norm"] == pytest.approx(grad_norm, rel=1e-6)
        assert got["update_norm"] == pytest.approx(update_norm, rel=1e-5)
    assert stats[0]["lr"] == pytest.approx(1e-2 / 3)
    assert stats[-1]["lr"] == pytest.approx(1e-2)
    for got, want, start in zip(params, expected, init):
        # Compare the displacement, which float32 represents far better than the position.
        torch.testing.assert_close((got.detach().double() - start), want - start, rtol=tol, atol=tol * 1e-2)


def test_agc_floor_clips_gradient_of_zero_parameter_to_clip_times_floor():
    zero = torch.zeros(3, 4, requires_grad=True)          # norm 0 -> limit 0.3 * 1e-3
    tiny = torch.full((4,), 5e-5, requires_grad=True)      # norm 1e-4 < floor -> same limit
    small = torch.full((4,), 5e-5, requires_grad=True)     # grad norm below the limit: kept
    grad_zero = torch.arange(12.0).reshape(3, 4) - 5.0
    grad_tiny = torch.tensor([3.0, 0.0, -4.0, 0.0])        # norm 5
    grad_small = torch.tensor([1e-4, -1e-4, 0.0, 0.0])     # norm 1.414e-4 < 3e-4
    for p, g in ((zero, grad_zero), (tiny, grad_tiny), (small, grad_small)):
        p.grad = g.clone()
    optimiser = LaProp([zero, tiny, small], warmup=0)
    optimiser.step()

    def clipped_grad(p):  # after one step nu = (1 - beta2) * g_clipped**2 elementwise
        return torch.sqrt(optimiser.state[p]["nu"].double() / (1 - 0.999))

    limit = 0.3 * 1e-3
    torch.testing.assert_close(clipped_grad(zero), grad_zero.abs().double() * limit / grad_zero.norm().item(),
                               rtol=1e-5, atol=0.0)
    assert clipped_grad(zero).norm().item() == pytest.approx(limit, rel=1e-5)
    torch.testing.assert_close(clipped_grad(tiny), torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64) * limit / 5,
                               rtol=1e-5, atol=0.0)
    torch.testing.assert_close(clipped_grad(small), grad_small.abs().double(), rtol=1e-5, atol=0.0)
    assert optimiser.last_stats["clipped_fraction"].item() == pytest.approx(2 / 3)


def test_linear_warmup_of_the_learning_rate():
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimiser = LaProp([p], warmup=1000)  # default lr 4e-5
    seen = {}
    for t in range(1, 2001):
        p.grad = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
        before = p.detach().clone()
        optimiser.step()
        if t in (1, 500, 1000, 2000):
            seen[t] = optimiser.last_stats["lr"].item()
        if t == 1:  # m_hat = sign(g) at the first step, so the move is exactly lr_1
            torch.testing.assert_close((before - p.detach()).abs(), torch.full((3,), 4e-8, dtype=torch.float64),
                                       rtol=1e-9, atol=0.0)
    assert seen[1] == pytest.approx(4e-8)
    assert seen[500] == pytest.approx(2e-5)
    assert seen[1000] == pytest.approx(4e-5)
    assert seen[2000] == pytest.approx(4e-5)
    assert [LaProp.scheduled_lr(4e-5, 1000, t) for t in (1, 500, 1000, 2000)] == pytest.approx([4e-8, 2e-5, 4e-5, 4e-5])
    assert LaProp.scheduled_lr(4e-5, 0, 1) == 4e-5


def test_state_dict_round_trip_resumes_warmup_and_bias_corrections():
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(5, 3, generator=gen), torch.randn(3, generator=gen) * 0.01]
    grads = make_grads([(5, 3), (3,)], [1.0, 5.0], steps=8, seed=4)
    kwargs = dict(lr=1e-2, warmup=10, weight_decay=0.01)

    params_a = [x.clone().requires_grad_() for x in init]
    optimiser_a, _ = run_optimiser(params_a, grads[:5], **kwargs)
    buffer = io.BytesIO()
    torch.save(optimiser_a.state_dict(), buffer)

    params_b = [x.detach().clone().requires_grad_() for x in params_a]
    params_fresh = [x.detach().clone().requires_grad_() for x in params_a]
    optimiser_b = LaProp(params_b, lr=1.0, warmup=1)  # options are restored from the state dict
    buffer.seek(0)
    optimiser_b.load_state_dict(torch.load(buffer))
    optimiser_fresh = LaProp(params_fresh, **kwargs)

    for grads_t in grads[5:]:
        for opt, params in ((optimiser_a, params_a), (optimiser_b, params_b), (optimiser_fresh, params_fresh)):
            for p, g in zip(params, grads_t):
                p.grad = g.float()
            opt.step()
        assert torch.equal(optimiser_a.last_stats["lr"], optimiser_b.last_stats["lr"])
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
    assert optimiser_b.state[params_b[0]]["step"] == 8
    assert optimiser_b.last_stats["lr"].item() == pytest.approx(1e-2 * 8 / 10)
    # Without the loaded state the trajectory differs, so the comparison above has teeth.
    assert not torch.equal(params_a[0], params_fresh[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1), "LaProp: lr = -1 must be > 0"),
    (dict(lr=0.0), "LaProp: lr = 0.0 must be > 0"),
    (dict(lr=float("nan")), "LaProp: lr = nan must be > 0"),
    (dict(betas=(1.0, 0.999)), "LaProp: betas[0] = 1.0 must be in [0, 1)"),
    (dict(betas=(0.9, -0.1)), "LaProp: betas[1] = -0.1 must be in [0, 1)"),
    (dict(betas=(0.9,)), "LaProp: betas = (0.9,) must be a pair (beta1, beta2)"),
    (dict(eps=-1e-8), "LaProp: eps = -1e-08 must be >= 0"),
    (dict(agc=-0.3), "LaProp: agc = -0.3 must be >= 0 (0 or None disables it)"),
    (dict(agc_floor=-1e-3), "LaProp: agc_floor = -0.001 must be >= 0"),
    (dict(warmup=-5), "LaProp: warmup = -5 must be an integer >= 0 (0 disables it)"),
    (dict(warmup=2.5), "LaProp: warmup = 2.5 must be an integer >= 0 (0 disables it)"),
    (dict(weight_decay=-0.1), "LaProp: weight_decay = -0.1 must be >= 0"),
])
def test_argument_validation_messages(kwargs, message):
    with pytest.raises(ValueError) as info:
        LaProp([torch.zeros(2, requires_grad=True)], **kwargs)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_param_group_options_are_validated_too():
    with pytest.raises(ValueError, match=r"^LaProp: lr = -0.5 must be > 0$"):
        LaProp([{"params": [torch.zeros(2, requires_grad=True)], "lr": -0.5}])


def test_agc_none_or_zero_disables_clipping():
    for agc in (None, 0, 0.0):
        p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        p.grad = torch.tensor([3.0, 0.0, -4.0, 0.0], dtype=torch.float64)
        optimiser = LaProp([p], agc=agc)
        optimiser.step()
        torch.testing.assert_close(optimiser.state[p]["nu"], 1e-3 * p.grad**2, rtol=1e-12, atol=0.0)
        assert optimiser.last_stats["clipped_fraction"].item() == 0.0


def test_parameters_without_gradient_are_skipped_and_closure_loss_returned():
    used = torch.ones(3, requires_grad=True)
    unused = torch.ones(2, requires_grad=True)
    optimiser = LaProp([used, unused], lr=0.1, warmup=0, agc=0)

    def closure():
        optimiser.zero_grad()
        loss = (used * torch.tensor([1.0, -2.0, 3.0])).sum()
        loss.backward()
        return loss

    loss = optimiser.step(closure)
    assert loss.item() == pytest.approx(2.0)
    torch.testing.assert_close(used.detach(), torch.tensor([0.9, 1.1, 0.9]))
    assert torch.equal(unused.detach(), torch.ones(2))
    assert len(optimiser.state[unused]) == 0
    assert optimiser.state[used]["step"] == 1

    optimiser.zero_grad()
    assert optimiser.step() is None
    assert optimiser.last_stats == {}
    assert optimiser.state[used]["step"] == 1


def test_param_groups_use_their_own_learning_rate():
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimiser = LaProp([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, warmup=0)
    a.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    b.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    optimiser.step()
    torch.testing.assert_close(a.detach(), torch.tensor([-0.1, 0.1], dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor([-0.5, 0.5], dtype=torch.float64))
    assert optimiser.last_stats["lr"].item() == pytest.approx(0.1)
    assert optimiser.last_stats["update_norm"].item() == pytest.approx(math.sqrt(2 * 0.01 + 2 * 0.25))


def test_minimises_a_least_squares_problem():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(30, 5, generator=gen)
    b = torch.randn(30, generator=gen)
    solution = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    x = torch.zeros(5, requires_grad=True)
    optimiser = LaProp([x], lr=1e-2, warmup=0)  # default AGC stays on
    start = ((a @ x - b) ** 2).mean().item()
    for _ in range(300):
        optimiser.zero_grad()
        loss = ((a @ x - b) ** 2).mean()
        loss.backward()
        optimiser.step()
    best = ((a @ solution - b) ** 2).mean().item()
    final = ((a @ x - b) ** 2).mean().item()
    assert final - best < 1e-4 * (start - best)
    assert (x.detach() - solution).norm().item() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(6)
    init = [torch.randn(8, 8, generator=gen) * 0.1, torch.randn(8, generator=gen)]
    grads = make_grads([(8, 8), (8,)], [10.0, 0.01], steps=4, seed=7)
    cpu = [x.clone().requires_grad_() for x in init]
    cuda = [x.cuda().requires_grad_() for x in init]
    _, stats_cpu = run_optimiser(cpu, grads, lr=1e-2, warmup=2)
    optimiser, stats_cuda = run_optimiser(cuda, [[g.cuda() for g in gs] for gs in grads], lr=1e-2, warmup=2)
    assert all(v.device.type == "cuda" for v in optimiser.last_stats.values())
    for c, g in zip(cpu, cuda):
        torch.testing.assert_close(g.detach().cpu(), c.detach(), rtol=1e-5, atol=1e-6)
    assert stats_cuda[-1] == pytest.approx(stats_cpu[-1], rel=1e-5)
