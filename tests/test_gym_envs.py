"""robotd.gym_envs: the simulated robot tasks as in-process Gymnasium environments."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

from drivers import registry  # noqa: E402
from drivers.sim.mock import MockArm  # noqa: E402
from robotd import gym_envs  # noqa: E402
from robotd.gym_envs import ENV_CONFIGS, RobotEnv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

if "test_real_arm" not in registry.names():
    @registry.register("test_real_arm")
    class RealArm(MockArm):
        """A mock arm that says it is real hardware."""
        simulated = False


def _mujoco():
    from tests import requires  # noqa: E402
    requires.mujoco()


def test_every_id_is_registered_with_gymnasium_and_importing_needs_neither_mujoco_nor_torch():
    for env_id, name in ENV_CONFIGS.items():
        spec = gymnasium.registry[env_id]
        assert spec.entry_point == "robotd.gym_envs:RobotEnv"
        assert spec.kwargs == {"config": str(gym_envs.CONFIG_DIR / name)}
    code = ("import sys, robotd.gym_envs; "
            "assert 'mujoco' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    # The module prefix makes Gymnasium 1.x (which loads no plugins) import and register them itself.
    code = "import gymnasium; env = gymnasium.make('robotd.gym_envs:robotd/SimUR5Reach-v0'); print(type(env.unwrapped).__name__)"
    if gym_envs.config_path("robotd/SimUR5Reach-v0").is_file():
        _mujoco()
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 0 and result.stdout.strip() == "RobotEnv", result.stderr[-2000:]


def test_a_config_with_real_hardware_is_refused_in_one_line(monkeypatch):
    with pytest.raises(ValueError) as error:
        RobotEnv(ROOT / "configs" / "mock_arm.yaml", overrides=["robot.driver=test_real_arm"])
    message = str(error.value)
    assert "\n" not in message and "robot.driver = 'test_real_arm' is not a simulated driver" in message
    monkeypatch.setattr(gym_envs, "CONFIG_DIR", ROOT / "no-such-dir")
    with pytest.raises(ValueError, match=r"config file .*no-such-dir/sim_ur5_reach.yaml does not exist"):
        gym_envs.config_path("robotd/SimUR5Reach-v0")


def test_a_discrete_simulator_gets_a_discrete_action_space_and_one_hot_commands():
    env = RobotEnv(ROOT / "configs" / "gym_cartpole.yaml")
    try:
        assert env.action_space == gymnasium.spaces.Discrete(2)
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs) and obs["state"].dtype == np.float32
        _, reward, _, _, info = env.step(1)
        assert reward == 1.0 and info["safety_clipped"] is False
        assert env.io.prev_action.tolist() == [0.0, 1.0]
        with pytest.raises(ValueError, match="not a choice in 0..1"):
            env.step(2)
    finally:
        env.close()


def test_a_reset_free_task_resets_the_robot_only_first_and_when_asked():
    env = RobotEnv(ROOT / "configs" / "mock_legged.yaml", overrides=["task.episode_steps=3"])
    try:
        assert env.task.reset_request is False
        _, info = env.reset(seed=0)
        assert info["robot_reset"] and env.io.counters["resets"] == 1
        action = np.zeros(env.action_dim, np.float32)
        assert env.step(action)[3] is False
        assert env.step(action)[3] is True          # 3 observations: the time limit
        _, info = env.reset()
        assert not info["robot_reset"] and env.io.counters["resets"] == 1
        _, info = env.reset(options={"robot_reset": True})
        assert info["robot_reset"] and env.io.counters["resets"] == 2
    finally:
        env.close()


# --- MuJoCo UR5 ----------------------------------------------------------------------------------
@pytest.fixture
def reach():
    _mujoco()
    env = gymnasium.make("robotd/SimUR5Reach-v0", overrides=["task.episode_steps=6"])
    yield env
    env.close()


def test_reach_steps_and_resets_inside_its_spaces_and_truncates_at_episode_steps(reach):
    space = reach.observation_space
    assert space["image"].dtype == np.uint8 and space["joint_pos"].dtype == np.float32
    assert not any(key.startswith("scene_") for key in space.spaces)
    assert reach.action_space.shape == (reach.unwrapped.action_dim,) and reach.action_space.high.max() == 1.0
    for episode in range(2):
        obs, info = reach.reset(seed=episode)
        assert space.contains(obs) and info["robot_reset"]
        truncated = False
        for step in range(5):
            obs, reward, terminated, truncated, info = reach.step(reach.action_space.sample())
            assert space.contains(obs) and np.isfinite(reward)
            assert set(info) >= {"is_success", "safety_clipped", "protective_stop", "robot_status"}
            assert truncated == (step == 4) and not terminated     # 6 observations per episode, the reset's included
        assert truncated


def test_reach_passes_gymnasiums_env_checker(reach):
    from gymnasium.utils.env_checker import check_env
    check_env(reach.unwrapped, skip_render_check=True)     # render is checked below, with its render_mode


def test_render_gives_the_camera_view_larger_than_the_observation():
    _mujoco()
    env = gymnasium.make("robotd/SimUR5Reach-v0", render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=0)
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[0] > obs["image"].shape[0]
    finally:
        env.close()


def test_seeding_makes_two_envs_observe_the_same_and_another_seed_differently(reach):
    other = gymnasium.make("robotd/SimUR5Reach-v0", overrides=["task.episode_steps=6"])
    try:
        actions = np.random.default_rng(0).uniform(-1, 1, (4, reach.action_space.shape[0])).astype(np.float32)
        runs = []
        for env, seed in ((reach, 7), (other, 7), (other, 8)):
            obs, _ = env.reset(seed=seed)
            trace = [obs]
            for action in actions:
                trace.append(env.step(action)[0])
            runs.append(trace)
        for a, b in zip(runs[0], runs[1]):
            assert all(np.array_equal(a[key], b[key]) for key in a)
        assert not np.array_equal(runs[0][0]["joint_pos"], runs[2][0]["joint_pos"])
    finally:
        other.close()


def test_an_out_of_range_action_is_clipped_by_the_daemons_safety_layer(reach):
    env = reach.unwrapped
    reach.reset(seed=0)
    assert reach.step(np.zeros(env.action_dim, np.float32))[4]["safety_clipped"] is False
    before = env.io.counters["safety_clipped"]
    assert reach.step(np.full(env.action_dim, 5.0, np.float32))[4]["safety_clipped"] is True
    assert env.io.counters["safety_clipped"] == before + 1
    assert np.all(np.abs(env.io.prev_action) <= 1.0)


@pytest.mark.parametrize("env_id", ["robotd/SimA1Stand-v0", "robotd/SimA1Walk-v0", "robotd/SimUR5PickPlace-v0",
                                    "robotd/SimUR5ReachState-v0"])
def test_the_other_simulated_tasks_step_when_their_configs_exist(env_id):
    _mujoco()
    path = gym_envs.CONFIG_DIR / ENV_CONFIGS[env_id]
    if not path.is_file():
        pytest.skip(f"{env_id}: config {path} does not exist yet")
    env = gymnasium.make(env_id)
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        for _ in range(3):
            obs, reward, *_ = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs) and np.isfinite(reward)
    finally:
        env.close()
