"""Specification of the DreamerV3 agent (learner.dreamer): training, checkpoints and batch-1 acting."""

import dataclasses
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.dreamer import Dreamer, ModelConfig, Policy, preset
from learner.networks import LatentState

ROOT = Path(__file__).resolve().parent.parent

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


def test_presets_have_the_published_sizes_and_unknown_names_are_rejected():
    sizes = ("deter", "hidden", "classes", "cnn_depth", "units")
    published = {"1m": (512, 64, 4, 4, 64), "12m": (2048, 256, 16, 16, 256), "25m": (3072, 384, 24, 24, 384),
                 "50m": (4096, 512, 32, 32, 512), "100m": (6144, 768, 48, 48, 768),
                 "200m": (8192, 1024, 64, 64, 1024), "400m": (12288, 1536, 96, 96, 1536)}
    for name, expected in published.items():
        config = preset(name)
        assert tuple(getattr(config, size) for size in sizes) == expected, name
        assert (config.stoch, config.blocks, config.layers, config.head_layers, config.horizon) == (32, 8, 3, 1, 15)
        assert config.cnn_mults == (2, 3, 4, 4) and config.cnn_kernel == 5
    config = ModelConfig()
    assert config.gamma == pytest.approx(1 - 1 / 333)
    assert (config.lr, config.agc, config.eps, config.warmup) == (4e-5, 0.3, 1e-20, 1000)
    assert (config.loss_dyn, config.loss_rep, config.loss_repval, config.free_nats) == (1.0, 0.1, 0.3, 1.0)
    assert (config.entropy, config.lam, config.slow_critic_rate, config.unimix) == (3e-4, 0.95, 0.02, 0.01)
    with pytest.raises(ValueError, match="huge.*tiny, small, 1m, 12m"):
        preset("huge")


def test_every_preset_a_config_accepts_builds_and_loading_a_config_needs_no_torch():
    from robotd import config as config_module
    from robotd.presets import PRESET_NAMES
    field = next(f for f in dataclasses.fields(config_module.ModelSection) if f.name == "preset")
    assert tuple(field.metadata["choices"]) == PRESET_NAMES
    for name in PRESET_NAMES:
        assert isinstance(preset(name), ModelConfig), name
    code = ("import sys\nfrom robotd import config\nconfig.load('configs/sim_ur5_reach.yaml', "
            "['learner.model.preset=400m'])\nsys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_preset_parameter_counts_match_their_names():
    spec = {"image": ((64, 64, 3), "uint8"), "vector": ((32,), "float32")}
    for name, low, high in (("1m", 0.5e6, 1.5e6), ("12m", 10e6, 14e6)):
        total = Dreamer(spec, 6, preset(name)).parameter_counts()["total"]
        assert low < total < high, (name, total)


def test_model_settings_are_validated_in_one_line():
    with pytest.raises(ValueError, match="deter = 100 must divide into blocks = 8"):
        ModelConfig(deter=100)
    with pytest.raises(ValueError, match="precision = 'half' is not one of auto, float32, bfloat16"):
        ModelConfig(precision="half")
    with pytest.raises(ValueError, match="cnn_stride"):
        ModelConfig(cnn_stride="dilated")


def test_train_step_returns_finite_metrics_for_image_and_vector_observations(agent):
    metrics = agent.train_step(make_batch(seed=1))
    expected = {
        "loss/image", "loss/vector", "loss/reward", "loss/continue", "loss/kl_dyn", "loss/kl_rep",
        "loss/world_model", "loss/actor", "loss/critic", "loss/replay_critic", "actor/entropy",
        "return_normaliser/scale", "optimiser/grad_norm", "optimiser/update_norm", "optimiser/clipped_fraction",
        "optimiser/lr",
    }
    assert expected <= set(metrics)
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())
    assert metrics["loss/kl_dyn"] >= 1.0 and metrics["loss/kl_rep"] >= 1.0  # free bits
    assert metrics["return_normaliser/scale"] >= 1.0
    assert agent.updates == 1
    assert metrics["optimiser/lr"] == pytest.approx(4e-5 / 1000)  # first step of the linear warm-up


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
        initial = rssm.initial_state(1)
        expected = rssm.core(initial.deter, initial.stoch, rssm.action_input(torch.zeros(1, ACTION_DIM)))
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


def train_on_sequences(agent, states, actions, rewards, *, updates, rng, batch=8) -> list[dict[str, float]]:
    """``updates`` train steps on random batches of whole single-episode sequences (observation key "state")."""
    sequences, length = rewards.shape
    is_first = np.zeros((sequences, length), bool)
    is_first[:, 0] = True
    no_flags = np.zeros((sequences, length), bool)
    history = []
    for _ in range(updates):
        chosen = rng.choice(sequences, batch, replace=False)
        history.append(agent.train_step({"state": states[chosen], "action": actions[chosen],
                                         "reward": rewards[chosen], "is_first": is_first[chosen],
                                         "is_last": no_flags[chosen], "is_terminal": no_flags[chosen]}))
    return history


def test_world_model_learns_a_synthetic_sequence_task():
    """Reward and reconstruction losses fall clearly on a small deterministic dynamical system.

    The observation is a 3-d state driven by the actions; the reward is a fixed function of
    the observation. The model learning rate is raised to 1e-3 so the test needs only 100
    updates (no warm-up); it checks that the losses and gradients point the right way, not the paper's
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

    config = dataclasses.replace(preset("tiny"), lr=1e-3, warmup=0)
    agent = Dreamer({"state": ((3,), "float32")}, action_dim, config)
    history = train_on_sequences(agent, states, actions, rewards, updates=100, rng=rng)
    losses = np.array([(metrics["loss/reward"], metrics["loss/vector"]) for metrics in history])
    start, end = losses[:5].mean(0), losses[-10:].mean(0)
    assert end.sum() < 0.7 * start.sum()
    assert end[0] < 0.7 * start[0]  # the reward head on its own
    assert end[1] < 0.7 * start[1]  # the reconstruction on its own


def test_actor_learns_to_drive_the_rewarded_state_up():
    """REINFORCE in imagination finds the action that raises the reward.

    The reward is the first state entry, which the first action dimension pushes up; after
    training, the policy's mean action in that dimension is close to +1. Learning rates are
    raised to 1e-3 (no warm-up) so that 150 updates suffice.
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

    config = dataclasses.replace(preset("tiny"), lr=1e-3, warmup=0)
    spec = {"state": ((2,), "float32")}
    agent = Dreamer(spec, action_dim, config)
    train_on_sequences(agent, states, actions, rewards, updates=150, rng=rng)
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
    rssm = agent.world_model.rssm
    deter, stoch = torch.zeros(2, 4, rssm.deter), torch.zeros(2, 4, rssm.stoch, rssm.classes)
    assert agent.world_model.decoder(deter, stoch)["camera"].shape == (2, 4, 30, 22, 3)


def test_observation_keys_may_not_clash_with_batch_keys():
    with pytest.raises(ValueError, match="reward"):
        Dreamer({"reward": ((1,), "float32")}, ACTION_DIM, preset("tiny"))


def test_block_linear_keeps_its_groups_independent():
    from learner.networks import BlockLinear
    layer = BlockLinear(12, 8, groups=4)
    x = torch.randn(5, 12, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(lambda inputs: layer(inputs).sum(0), x)  # (8, 5, 12)
    per_group = jacobian.abs().sum(1).reshape(4, 2, 4, 3).sum((1, 3))  # output group x input group
    assert torch.count_nonzero(per_group - torch.diag(torch.diagonal(per_group))) == 0
    assert torch.all(torch.diagonal(per_group) > 0)


def test_block_gru_has_the_state_shape_and_passes_gradients_to_every_core_parameter():
    from learner.networks import RSSM
    rssm = RSSM(embed_dim=10, action_dim=3, deter=32, hidden=16, stoch=4, classes=5, unimix=0.01, blocks=8)
    stoch = torch.nn.functional.one_hot(torch.randint(0, 5, (6, 4)), 5).float()
    deter = rssm.core(torch.randn(6, 32), stoch, rssm.action_input(torch.randn(6, 3)))
    assert deter.shape == (6, 32)
    deter.square().sum().backward()
    core = [rssm.deter_in, rssm.stoch_in, rssm.action_in, rssm.dyn_layers, rssm.gates]
    for module in core:
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # Each of the 8 blocks sees its own 4 state units and the three 16-unit projections (shared
    # by all blocks, so stored as one dense matrix) in its hidden layer, then makes reset,
    # candidate and update gates for its 4 units.
    first = rssm.dyn_layers[0]["linear"]
    assert first.weight.shape == (8, 32 // 8, 32 // 8) and first.shared_weight.shape == (3 * 16, 32)
    assert rssm.gates.weight.shape == (8, 32 // 8, 3 * 32 // 8)


def test_observe_resets_the_state_at_is_first_inside_a_sequence(agent):
    rssm = agent.world_model.rssm
    embed = torch.randn(1, 6, agent.world_model.encoder.out_features)
    action = torch.randn(1, 6, ACTION_DIM)
    is_first = torch.tensor([[True, False, False, True, False, False]])
    torch.manual_seed(0)
    with torch.no_grad():
        states, _, _ = rssm.observe(embed, action, is_first)
        alone, _, _ = rssm.observe(embed[:, 3:], action[:, 3:], is_first[:, 3:])
    # The deterministic state right after a reset depends only on the weights and the observation.
    torch.testing.assert_close(states.deter[:, 3], alone.deter[:, 0])


def test_discrete_actions_train_and_act_as_one_hot_vectors():
    spec = {"vector": ((5,), "float32")}
    agent = Dreamer(spec, 4, preset("tiny"), discrete=True)
    batch = make_batch(seed=2)
    del batch["image"]
    batch["vector"] = batch["vector"][..., :5]
    batch["action"] = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (4, 16))]
    metrics = agent.train_step(batch)
    assert math.isfinite(metrics["loss/actor"]) and metrics["actor/entropy"] > 0
    policy = Policy(spec, 4, preset("tiny"), discrete=True)
    policy.load(agent.policy_state_dict())
    for step in range(4):
        action = policy.act({"vector": np.ones(5, np.float32)}, is_first=step == 0)
        assert sorted(action.tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_report_shows_truth_model_and_error_side_by_side(agent):
    scalars, videos = agent.report(make_batch(seed=3), context=4)
    assert {"report/loss/image", "report/loss/reward", "report/openloop/image", "report/openloop/vector"} <= set(scalars)
    video = videos["openloop/image"]
    assert video.shape == (4, 16, 16, 3 * 16, 3) and video.dtype == np.uint8
    truth = make_batch(seed=3)["image"]
    # The left third is the recorded frame (up to the 1/255 rounding of the float round trip).
    assert np.abs(video[:, :, :, :16].astype(int) - truth.astype(int)).max() <= 1
    # The right third is the absolute error of the middle third against the truth.
    error = np.abs(video[:, :, :, 16:32].astype(int) - truth.astype(int))
    assert np.abs(video[:, :, :, 32:].astype(int) - error).max() <= 2
    assert agent.updates == 0  # a report does not train


def test_checkpoint_from_an_older_learner_is_refused_with_a_clear_message(agent):
    with pytest.raises(ValueError, match="older learner"):
        agent.load_checkpoint({"modules": {}, "optimisers": {}, "updates": 3})


@pytest.mark.slow
def test_compiled_steps_match_the_eager_update():
    """torch.compile of the recurrent steps changes speed, not results (takes minutes on a CPU)."""
    batch = make_batch(seed=4)
    results = []
    for choice in ("off", "on"):
        torch.manual_seed(0)
        agent = Dreamer(OBS_SPEC, ACTION_DIM, dataclasses.replace(preset("tiny"), compile=choice))
        torch.manual_seed(1)
        results.append(agent.train_step(batch))
    for name in ("loss/world_model", "loss/reward", "loss/kl_dyn"):
        assert results[0][name] == pytest.approx(results[1][name], rel=1e-3), name


def test_fused_norm_act_matches_autograd_through_rmsnorm_and_silu():
    from learner.networks import _norm_act, _norm_act_reference
    torch.manual_seed(0)
    x = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
    weight = (1.0 + 0.1 * torch.randn(12, dtype=torch.float64)).requires_grad_()
    grad = torch.randn(40, 12, dtype=torch.float64)
    results = []
    for function in (_norm_act, _norm_act_reference):
        out = function(x, weight)
        gx, gw = torch.autograd.grad(out, (x, weight), grad)
        results.append((out, gx, gw))
    for fused, reference in zip(*results):
        torch.testing.assert_close(fused, reference)
    assert torch.autograd.gradcheck(_norm_act, (x, weight))


# Replay context: a sequence continues from the stored latent of the step before it.

def make_context(config: ModelConfig, seed: int, batch: int = 4) -> dict[str, np.ndarray]:
    """A random latent state (tanh-bounded deter, one-hot stoch) and action for the step before each sequence."""
    rng = np.random.default_rng(seed)
    return {
        "context_deter": np.tanh(rng.normal(size=(batch, config.deter))).astype(np.float32),
        "context_stoch": np.eye(config.classes, dtype=np.float32)[rng.integers(0, config.classes,
                                                                               (batch, config.stoch))],
        "context_action": rng.uniform(-1, 1, (batch, ACTION_DIM)).astype(np.float32),
        "context_valid": np.ones(batch, bool),
    }


def step_zero_deter(config: ModelConfig, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The step-0 posterior deter ``(B, deter)`` of one update of a freshly seeded tiny agent."""
    torch.manual_seed(0)
    agent = Dreamer(OBS_SPEC, ACTION_DIM, config)
    agent.train_step(batch)
    return agent.last_posterior[0][:, 0]


def test_replay_context_setting_is_validated_and_on_by_default():
    assert ModelConfig().replay_context == 1 and preset("tiny").replay_context == 1
    with pytest.raises(ValueError, match="replay_context = 2 must be 0"):
        ModelConfig(replay_context=2)


def test_replay_context_is_where_step_zero_continues_from():
    """Old behaviour (every sequence starts cold) fails this: the context must change the step-0 posterior."""
    batch = make_batch(seed=5)
    batch["is_first"][1:, 0] = False                   # sequences 1..3 start mid-episode, sequence 0 an episode
    context = make_context(preset("tiny"), seed=6)
    context["context_valid"][3] = False                # no latent stored for sequence 3's context step
    tiny, cold_config = preset("tiny"), dataclasses.replace(preset("tiny"), replay_context=0)
    cold = step_zero_deter(tiny, batch)
    warm = step_zero_deter(tiny, {**batch, **context})
    invalid = step_zero_deter(tiny, {**batch, **context, "context_valid": np.zeros(4, bool)})
    ignored = step_zero_deter(cold_config, {**batch, **context})
    continued = [not np.allclose(warm[row], cold[row]) for row in range(4)]
    assert continued == [False, True, True, False]     # the episode start and the invalid context start cold
    np.testing.assert_allclose(invalid, cold, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ignored, cold, rtol=0, atol=1e-6)    # replay_context 0 ignores the context


def test_observe_from_a_start_state_continues_the_sequence(agent):
    rssm = agent.world_model.rssm
    embed = torch.randn(2, 6, agent.world_model.encoder.out_features)
    action = torch.randn(2, 6, ACTION_DIM)
    is_first = torch.zeros(2, 6, dtype=torch.bool)
    is_first[:, 0] = True
    with torch.no_grad():
        whole, _, _ = rssm.observe(embed, action, is_first)
        start = LatentState(whole.deter[:, 2], whole.stoch[:, 2])
        rest, _, _ = rssm.observe(embed[:, 3:], action[:, 3:], is_first[:, 3:], start)
        cold, _, _ = rssm.observe(embed[:, 3:], action[:, 3:], is_first[:, 3:])
    torch.testing.assert_close(rest.deter[:, 0], whole.deter[:, 3])
    assert not torch.allclose(cold.deter[:, 0], whole.deter[:, 3])


def test_last_posterior_holds_the_latents_of_the_update_for_writing_back(agent):
    assert agent.last_posterior is None
    agent.train_step(make_batch(seed=7))
    deter, stoch = agent.last_posterior
    config = agent.config
    assert deter.shape == (4, 16, config.deter) and deter.dtype == np.float32
    assert stoch.shape == (4, 16, config.stoch) and stoch.dtype == np.uint8 and stoch.max() < config.classes
    half, same = agent.posterior_arrays(np.float16)
    assert half.dtype == np.float16 and np.array_equal(same, stoch)
    np.testing.assert_allclose(half, deter, atol=1e-3)


def test_written_back_latents_become_the_next_batches_context():
    from learner.replay import ReplayBuffer
    from robotd import steps
    torch.manual_seed(0)
    agent = Dreamer(OBS_SPEC, ACTION_DIM, preset("tiny"))
    replay = ReplayBuffer(10_000, seed=0)
    episode = make_batch(seed=8, batch=1, length=64)
    replay.add("a", 0, {("obs/" + key if key in OBS_SPEC else key): value[0] for key, value in episode.items()})
    batch = replay.sample(4, 16, context=True)
    assert not batch["context_valid"].any()
    agent.train_step(steps.training_batch(batch))
    deter, stoch = agent.last_posterior
    replay.update_latents(batch["replay_keys"], deter, stoch, agent.config.classes)
    for _ in range(20):
        batch = replay.sample(4, 16, context=True)
        if batch["context_valid"].any():
            break
    assert batch["context_valid"].any()
    assert math.isfinite(agent.train_step(steps.training_batch(batch))["loss/world_model"])
