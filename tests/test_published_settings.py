"""The agent follows the published DreamerV3 where the small-compute setting has no reason to differ:
initialisation scales, the replay value loss shaping the world model, and the imagination horizon."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from learner.dreamer import Dreamer, preset
from learner.networks import Actor, BlockLinear, SharedInputBlockLinear

TRUNC = 0.87962566103423978


def weight_std(tensor: torch.Tensor) -> float:
    return float(tensor.detach().float().std())


def test_block_linear_uses_the_whole_input_as_fan_in():
    torch.manual_seed(0)
    layer = BlockLinear(512, 1536, groups=8)
    # Published: 1 / sqrt(512); one block's fan-in (64) would give sqrt(8) = 2.8 times that.
    assert weight_std(layer.weight) == pytest.approx(1 / math.sqrt(512), rel=0.05)


def test_shared_input_block_linear_counts_every_group_copy_of_the_shared_input():
    torch.manual_seed(0)
    layer = SharedInputBlockLinear(256, 3 * 128, 256, groups=8)
    expected = 1 / math.sqrt(256 + 8 * 3 * 128)
    assert weight_std(layer.weight) == pytest.approx(expected, rel=0.05)
    assert weight_std(layer.shared_weight) == pytest.approx(expected, rel=0.05)


def test_actor_output_scale_multiplies_the_weights_not_their_variance():
    torch.manual_seed(0)
    actor = Actor(feature_dim=64, action_dim=4, units=256, layers=1, min_std=0.1, max_std=1.0, outscale=0.01)
    # 0.01 / sqrt(256); scaling the variance instead would give 0.1 / sqrt(256).
    assert weight_std(actor.out.weight) == pytest.approx(0.01 / math.sqrt(256), rel=0.1)


def test_presets_imagine_fifteen_steps():
    for name in ("tiny", "1m", "12m"):
        assert preset(name).horizon == 15


def _batch(seed: int, batch: int = 4, length: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {"state": rng.normal(size=(batch, length, 5)).astype(np.float32),
            "action": rng.uniform(-1, 1, (batch, length, 2)).astype(np.float32),
            "reward": rng.normal(size=(batch, length)).astype(np.float32),
            "is_first": is_first, "is_last": np.zeros((batch, length), bool),
            "is_terminal": np.zeros((batch, length), bool)}


@pytest.mark.parametrize("repval_grad", [True, False])
def test_replay_value_loss_trains_the_encoder_only_with_repval_grad(repval_grad):
    """Every loss but the replay value loss switched off: the encoder moves if and only if that loss reaches it."""
    torch.manual_seed(0)
    config = dataclasses.replace(preset("tiny"), loss_rec=0.0, loss_rew=0.0, loss_con=0.0, loss_dyn=0.0,
                                 loss_rep=0.0, loss_policy=0.0, loss_value=0.0, loss_repval=1.0, warmup=1,
                                 lr=1e-3, repval_grad=repval_grad)
    agent = Dreamer({"state": ((5,), "float32")}, 2, config)
    # The critic's output layer starts at zero, which passes no gradient back; give it weights first.
    with torch.no_grad():
        agent.critic.out.weight.normal_(0.0, 0.1)
    before = [p.detach().clone() for p in agent.world_model.encoder.parameters()]
    agent.train_step(_batch(0))
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(agent.world_model.encoder.parameters(), before))
    if repval_grad:
        assert moved > 1e-6
    else:
        assert moved == 0.0


def test_repval_grad_is_the_default():
    assert preset("tiny").repval_grad is True
    assert preset("12m").repval_grad is True
