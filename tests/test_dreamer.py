"""Specification of the DreamerV3 agent (learner.dreamer): training, checkpoints and batch-1 acting."""

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from learner.dreamer import Dreamer, ModelConfig, Policy, preset

ACTION_DIM = 6
OBS_SPEC = {"image": ((16, 16, 3), "uint8"), "vector": ((12,), "float32")}


def make_batch(seed: int, batch: int = 4, length: int = 16) -> dict[str, np.ndarray]:
    """Random sequences in the replay layout; sequence 0 holds a terminated episode followed by a new one."""
    rng = np.random.default_rng(seed)
    is_first = np.zeros((batch, length), bool)
    is_last = np.zeros((batch, length), bool)
    is_terminal = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    is_last[0, 7] = is_terminal[0, 7] = True
    is_first[0, 8] = True
    reward = rng.normal(size=(batch, length)).astype(np.float32)
    reward[is_first] = 0.0
    return {
        "image": rng.integers(0, 256, (batch, length, 16, 16, 3), dtype=np.uint8),
        "vector": rng.normal(size=(batch, length, 12)).astype(np.float32),
        "action": rng.uniform(-1, 1, (batch, length, ACTION_DIM)).astype(np.float32),
        "reward": reward,
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_terminal,
    }


def make_observation(seed: int) -> dict[str, np.ndarray]:
    """One random observation as the actor receives it (no batch or time dimensions)."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "vector": rng.normal(size=12).astype(np.float32),
    }


@pytest.fixture
def agent() -> Dreamer:
    """A freshly initialised tiny agent, seeded."""
    torch.manual_seed(0)
    return Dreamer(OBS_SPEC, ACTION_DIM, preset("tiny"))


def test_presets_have_the_documented_sizes_and_unknown_names_are_rejected():
    tiny, small = preset("tiny"), preset("small")
    sizes = ("deter", "hidden", "stoch", "classes", "units", "layers", "cnn_depth", "horizon")
    assert [getattr(tiny, name) for name in sizes] == [64, 64, 8, 8, 64, 1, 8, 8]
    assert [getattr(small, name) for name in sizes] == [256, 256, 16, 16, 256, 2, 16, 15]
    assert ModelConfig().gamma == pytest.approx(1 - 1 / 333)
    with pytest.raises(ValueError, match="small.*tiny|tiny.*small"):
        preset("huge")


def test_train_step_returns_finite_metrics_for_image_and_vector_observations(agent):
    metrics = agent.train_step(make_batch(seed=1))
    expected = {
        "loss/image", "loss/vector", "loss/reward", "loss/continue", "loss/kl_dyn", "loss/kl_rep",
        "loss/world_model", "loss/actor", "loss/critic", "loss/replay_critic", "actor/entropy",
        "return_normaliser/scale", "grad_norm/world_model", "grad_norm/actor", "grad_norm/critic",
    }
    assert expected <= set(metrics)
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())
    assert metrics["loss/kl_dyn"] >= 1.0 and metrics["loss/kl_rep"] >= 1.0  # free bits
    assert metrics["return_normaliser/scale"] >= 1.0
    assert agent.updates == 1


def test_train_step_changes_the_world_model_actor_and_critic(agent):
    before = {name: value.clone() for name, value in agent.state_dict().items()}
    agent.train_step(make_batch(seed=1))
    after = agent.state_dict()
    for prefix in ("world_model.", "actor.", "critic.", "slow_critic."):
        assert any(
            not torch.equal(before[name], after[name]) for name in after if name.startswith(prefix)
        ), prefix


def test_train_step_accepts_torch_tensors(agent):
    batch = {key: torch.as_tensor(value) for key, value in make_batch(seed=1).items()}
    assert math.isfinite(agent.train_step(batch)["loss/world_model"])


def test_policy_state_dict_holds_only_encoder_rssm_and_actor_and_matches_policy_names(agent):
    state = agent.policy_state_dict()
    assert {name.split(".")[0] for name in state} == {"encoder", "rssm", "actor"}
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    assert set(state) == set(policy.networks.state_dict())


def test_policy_acts_with_float32_actions_in_bounds(agent):
    agent.train_step(make_batch(seed=1))
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    policy.load(agent.policy_state_dict())
    for step in range(5):
        for explore in (True, False):
            action = policy.act(make_observation(step), is_first=step == 0, explore=explore)
            assert action.shape == (ACTION_DIM,)
            assert action.dtype == np.float32
            assert np.all(action >= -1.0) and np.all(action <= 1.0)


def test_policy_loads_read_only_numpy_arrays_as_received_over_a_network(agent):
    arrays = {}
    for name, value in agent.policy_state_dict().items():
        array = value.numpy().copy()
        array.flags.writeable = False
        arrays[name] = array
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    policy.load(arrays)
    for name, value in policy.networks.state_dict().items():
        assert torch.equal(value, agent.policy_state_dict()[name])


def test_policy_uses_the_learner_networks(agent):
    # The deterministic state after the first step depends only on the weights, so the
    # policy and the learner's RSSM must agree on it exactly.
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    policy.load(agent.policy_state_dict())
    policy.act(make_observation(0), is_first=True)
    rssm = agent.world_model.rssm
    with torch.no_grad():
        expected = rssm.recurrent_step(rssm.initial_state(1), torch.zeros(1, ACTION_DIM))
    torch.testing.assert_close(policy.state.deter, expected)


def test_policy_recurrent_state_changes_across_steps_and_resets_on_is_first(agent):
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    policy.load(agent.policy_state_dict())
    policy.act(make_observation(0), is_first=True)
    first_step = policy.state.deter.clone()
    policy.act(make_observation(1), is_first=False)
    second_step = policy.state.deter.clone()
    assert not torch.equal(first_step, second_step)
    policy.act(make_observation(2), is_first=False)
    # A new episode starts from the initial state again, whatever came before.
    policy.act(make_observation(3), is_first=True)
    torch.testing.assert_close(policy.state.deter, first_step)


def test_policy_reset_returns_to_the_learned_initial_state(agent):
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    policy.load(agent.policy_state_dict())
    policy.act(make_observation(0), is_first=True)
    policy.act(make_observation(1), is_first=False)
    policy.reset()
    with torch.no_grad():
        initial = agent.world_model.rssm.initial_state(1)
    assert torch.equal(policy.state.deter, initial.deter)
    assert torch.equal(policy.state.stoch, initial.stoch)


def test_policy_load_rejects_a_wrong_shaped_tensor_naming_the_parameter(agent):
    state = agent.policy_state_dict()
    name = next(name for name in state if name.startswith("rssm.") and state[name].dim() == 2)
    state[name] = torch.zeros(3, 5)
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        policy.load(state)


def test_policy_load_rejects_missing_and_unexpected_parameters_naming_them(agent):
    policy = Policy(OBS_SPEC, ACTION_DIM, preset("tiny"))
    state = agent.policy_state_dict()
    missing = next(iter(state))
    del state[missing]
    with pytest.raises(ValueError, match=missing.replace(".", r"\.")):
        policy.load(state)
    state = agent.policy_state_dict()
    state["critic.out.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"critic\.out\.weight"):
        policy.load(state)


def test_checkpoint_round_trip_restores_everything(agent):
    for seed in range(2):
        agent.train_step(make_batch(seed))
    buffer = io.BytesIO()
    torch.save(agent.checkpoint(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    torch.manual_seed(123)
    restored = Dreamer(OBS_SPEC, ACTION_DIM, preset("tiny"))
    restored.load_checkpoint(state)
    assert restored.updates == agent.updates == 2
    for name, value in agent.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name

    # The same next update (same data, same random numbers) must give identical results,
    # which needs the optimiser moments and the return normaliser restored too.
    batch = make_batch(seed=5)
    torch.manual_seed(7)
    original_metrics = agent.train_step(batch)
    torch.manual_seed(7)
    restored_metrics = restored.train_step(batch)
    assert original_metrics == restored_metrics
    for name, value in agent.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name


def test_world_model_learns_a_synthetic_sequence_task():
    """Reward and reconstruction losses fall clearly on a small deterministic dynamical system.

    The observation is a 3-d state driven by the actions; the reward is a fixed function of
    the observation. The model learning rate is raised to 1e-3 so the test needs only 100
    updates; it checks that the losses and gradients point the right way, not the paper's
    learning speed.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sequences, length, action_dim = 32, 16, 2
    actions = rng.uniform(-1, 1, (sequences, length, action_dim)).astype(np.float32)
    states = np.zeros((sequences, length, 3), np.float32)
    state = rng.normal(size=(sequences, 3)).astype(np.float32)
    for step in range(length):
        states[:, step] = state
        state = 0.9 * state + 0.5 * np.concatenate([actions[:, step], actions[:, step, :1]], -1)
    rewards = states[..., 0] - 0.5 * np.abs(states[..., 1])
    is_first = np.zeros((sequences, length), bool)
    is_first[:, 0] = True
    no_flags = np.zeros((sequences, length), bool)

    config = dataclasses.replace(preset("tiny"), model_lr=1e-3)
    agent = Dreamer({"state": ((3,), "float32")}, action_dim, config)
    losses = []
    for _ in range(100):
        chosen = rng.choice(sequences, 8, replace=False)
        metrics = agent.train_step(
            {
                "state": states[chosen],
                "action": actions[chosen],
                "reward": rewards[chosen],
                "is_first": is_first[chosen],
                "is_last": no_flags[chosen],
                "is_terminal": no_flags[chosen],
            }
        )
        losses.append((metrics["loss/reward"], metrics["loss/vector"]))
    losses = np.array(losses)
    start, end = losses[:5].mean(0), losses[-10:].mean(0)
    assert end.sum() < 0.7 * start.sum()
    assert end[0] < 0.7 * start[0]  # the reward head on its own
    assert end[1] < 0.7 * start[1]  # the reconstruction on its own


def test_actor_learns_to_drive_the_rewarded_state_up():
    """REINFORCE in imagination finds the action that raises the reward.

    The reward is the first state entry, which the first action dimension pushes up; after
    training, the policy's mean action in that dimension is close to +1. Learning rates are
    raised to 1e-3 so that 150 updates suffice.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sequences, length, action_dim = 64, 16, 2
    actions = rng.uniform(-1, 1, (sequences, length, action_dim)).astype(np.float32)
    states = np.zeros((sequences, length, 2), np.float32)
    state = rng.normal(size=(sequences, 2)).astype(np.float32)
    for step in range(length):
        states[:, step] = state
        state = 0.8 * state + 0.5 * actions[:, step]
    rewards = states[..., 0].copy()
    is_first = np.zeros((sequences, length), bool)
    is_first[:, 0] = True
    no_flags = np.zeros((sequences, length), bool)

    config = dataclasses.replace(preset("tiny"), model_lr=1e-3, actor_lr=1e-3, critic_lr=1e-3)
    spec = {"state": ((2,), "float32")}
    agent = Dreamer(spec, action_dim, config)
    for _ in range(150):
        chosen = rng.choice(sequences, 8, replace=False)
        agent.train_step(
            {
                "state": states[chosen],
                "action": actions[chosen],
                "reward": rewards[chosen],
                "is_first": is_first[chosen],
                "is_last": no_flags[chosen],
                "is_terminal": no_flags[chosen],
            }
        )
    policy = Policy(spec, action_dim, config)
    policy.load(agent.policy_state_dict())
    chosen_actions = [
        policy.act({"state": states[0, step]}, is_first=step == 0, explore=False) for step in range(length)
    ]
    assert np.mean([action[0] for action in chosen_actions]) > 0.5


def test_images_of_any_size_from_8_pixels_are_reconstructed_at_full_size():
    spec = {"camera": ((30, 22, 3), "uint8")}
    agent = Dreamer(spec, ACTION_DIM, preset("tiny"))
    batch = make_batch(seed=0, batch=2)
    batch["camera"] = np.random.default_rng(0).integers(0, 256, (2, 16, 30, 22, 3), dtype=np.uint8)
    del batch["image"], batch["vector"]
    assert math.isfinite(agent.train_step(batch)["loss/image"])
    features = torch.zeros(2, 4, agent.world_model.rssm.feature_dim)
    assert agent.world_model.decoder(features)["camera"].shape == (2, 4, 30, 22, 3)


def test_observation_keys_may_not_clash_with_batch_keys():
    with pytest.raises(ValueError, match="reward"):
        Dreamer({"reward": ((1,), "float32")}, ACTION_DIM, preset("tiny"))
