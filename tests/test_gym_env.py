"""Gymnasium environments as simulated robots: the gym driver, the gym task, the simulated safety
layer, discrete actions, and lockstep pacing in the daemon (with its validation)."""
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")
from gymnasium import spaces  # noqa: E402

import drivers  # noqa: E402
from actor.loop import random_action  # noqa: E402
from drivers import registry  # noqa: E402
from drivers.sim.gym_env import resize_image  # noqa: E402
from robotd import config as cfg  # noqa: E402
from robotd import tasks, wire  # noqa: E402
from robotd.daemon.clock import LockstepClock  # noqa: E402
from robotd.daemon.loop import Daemon  # noqa: E402
from robotd.netutil import free_tcp_ports  # noqa: E402
from robotd.daemon.safety import SimSafety  # noqa: E402
from tests.test_daemon import Running  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIGNALS = ("reward", "terminated", "truncated", "success")


class CountingEnv(gymnasium.Env):
    """Dict observation; reward = the chosen action index; terminates after ``end`` steps (truncates with truncate)."""

    def __init__(self, end=3, truncate=False):
        self.observation_space = spaces.Dict({
            "pos": spaces.Box(-10, 10, (2,), np.float64),
            "mode": spaces.Discrete(3),
            "nested": spaces.Dict({"a": spaces.Box(-1, 1, (), np.float32)}),
        })
        self.action_space = spaces.Discrete(4)
        self.end, self.truncate = end, truncate
        self.t = 0

    def _obs(self):
        return {"pos": np.array([self.t, -self.t], np.float64), "mode": self.t % 3,
                "nested": {"a": np.array(0.5, np.float32)}}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.end
        return self._obs(), float(action), done and not self.truncate, done and self.truncate, {}


for env_id, kwargs in (("RobotdCounting-v0", {}), ("RobotdCountingTrunc-v0", {"truncate": True})):
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=CountingEnv, kwargs=kwargs)


def connected(**args):
    env = drivers.make("gym", **args)
    env.connect()
    return env


# ------------------------------------------------------------------------------------------------ driver
def test_box_observation_and_continuous_action_rescaled_to_the_bounds():
    env = connected(env_id="Pendulum-v1", seed=3)
    assert env.simulated and not env.action_discrete and env.action_dim == 1
    assert env.reading_spec() == {"state": ((3,), "float32"), "reward": ((1,), "float32"),
                                  "terminated": ((1,), "float32"), "truncated": ((1,), "float32"), "success": ((1,), "float32")}
    first = env.read()
    assert first.values["state"].dtype == np.float32 and first.values["reward"][0] == 0.0
    assert first.domain == "system_time" and first.frame_number == 0
    for unit, torque in ((1.0, 2.0), (-0.5, -1.0), (0.0, 0.0), (3.0, 2.0)):
        env.command_action(np.array([unit]))
        assert env.last_env_action[0] == pytest.approx(torque)
        assert env.env.unwrapped.last_u == pytest.approx(torque)
    reading = env.read()
    assert reading.frame_number == 4 and reading.values["reward"][0] < 0
    with pytest.raises(ValueError, match="finite"):
        env.command_action(np.array([np.nan]))


def test_gymnasium_mujoco_suite_runs_as_a_robot():
    """Gymnasium's own MuJoCo environments (which import imageio, part of the sim and test extras) drive like any other."""
    pytest.importorskip("mujoco", reason="the MuJoCo suite needs mujoco (sim or test extra)")
    env = connected(env_id="Hopper-v5", seed=1)
    assert env.reading_spec()["state"] == ((11,), "float32") and env.action_dim == 3
    start = env.read().values["state"].copy()
    for _ in range(5):
        env.command_action(np.array([1.0, -1.0, 0.5]))
    assert env.last_env_action == pytest.approx([1.0, -1.0, 0.5])
    assert not np.array_equal(env.read().values["state"], start)


def test_the_environments_is_success_is_the_success_reading():
    env = connected(env_id="robotd.gym_envs:robotd/PointReach-v0", seed=2)
    assert env.read().values["success"][0] == 0.0
    inner = env.env.unwrapped
    for _ in range(12):
        env.command_action((inner.target - inner.position) / inner.speed)
    assert inner._distance() < inner.success_radius and env.read().values["success"][0] == 1.0


def test_the_same_seed_gives_the_same_episode():
    a, b = connected(env_id="Pendulum-v1", seed=7), connected(env_id="Pendulum-v1", seed=7)
    for _ in range(5):
        a.command_action(np.array([0.3]))
        b.command_action(np.array([0.3]))
    np.testing.assert_array_equal(a.read().values["state"], b.read().values["state"])


def test_discrete_action_is_the_argmax_of_the_scores():
    env = connected(env_id="CartPole-v1", seed=1)
    assert env.action_discrete and env.action_dim == 2
    reference = gymnasium.make("CartPole-v1")
    reference.reset(seed=1)
    for scores, choice in (([0.1, 0.9], 1), ([1.0, 0.0], 0), ([-0.2, -0.7], 0), ([0.0, 1.0], 1)):
        env.command_action(np.array(scores))
        assert env.last_env_action == choice
        expected, *_ = reference.step(choice)
        np.testing.assert_allclose(env.read().values["state"], expected, rtol=1e-6)


def test_dict_observations_are_flattened_into_keys():
    env = connected(env_id="RobotdCounting-v0")
    spec = env.reading_spec()
    assert spec == {"pos": ((2,), "float32"), "mode": ((3,), "float32"), "nested_a": ((1,), "float32"),
                    "reward": ((1,), "float32"), "terminated": ((1,), "float32"), "truncated": ((1,), "float32"), "success": ((1,), "float32")}
    env.command_action(np.eye(4)[2])
    values = env.read().values
    np.testing.assert_array_equal(values["pos"], [1, -1])
    np.testing.assert_array_equal(values["mode"], [0, 1, 0])          # one-hot of t % 3 = 1
    assert values["nested_a"][0] == 0.5 and values["reward"][0] == 2.0
    assert {key: value.shape for key, value in values.items()} == {key: s for key, (s, _) in spec.items()}


def test_terminated_and_truncated_are_reported_and_a_step_after_the_end_resets():
    env = connected(env_id="RobotdCounting-v0")
    for _ in range(3):
        env.command_action(np.eye(4)[1])
    values = env.read().values
    assert values["terminated"][0] == 1.0 and values["truncated"][0] == 0.0 and values["reward"][0] == 1.0
    env.command_action(np.eye(4)[1])                                 # a late reset: the driver resets itself
    values = env.read().values
    assert env.auto_resets == 1 and env.episodes == 2
    assert values["terminated"][0] == 0.0 and values["reward"][0] == 0.0 and values["pos"][0] == 0.0
    trunc = connected(env_id="RobotdCountingTrunc-v0")
    for _ in range(3):
        trunc.command_action(np.eye(4)[0])
    values = trunc.read().values
    assert values["truncated"][0] == 1.0 and values["terminated"][0] == 0.0
    trunc.reset()
    assert trunc.read().values["truncated"][0] == 0.0 and trunc.episodes == 2


def test_pixels_are_a_64x64_camera_like_image():
    env = connected(env_id="CartPole-v1", pixels=True, vector_obs=False, seed=0)
    assert env.reading_spec()["image"] == ((64, 64, 3), "uint8") and "state" not in env.reading_spec()
    before = env.read().values["image"]
    assert before.dtype == np.uint8 and before.shape == (64, 64, 3) and before.std() > 5
    for _ in range(8):
        env.command_action(np.array([1.0, 0.0]))
    assert np.any(env.read().values["image"] != before)             # the cart moved
    both = connected(env_id="Pendulum-v1", pixels=True, image_size=[32, 48])
    assert set(both.reading_spec()) == {"state", "image", *SIGNALS}
    assert both.read().values["image"].shape == (32, 48, 3)


def test_bad_driver_arguments_fail_with_one_line():
    with pytest.raises(ValueError, match="observes nothing"):
        drivers.make("gym", env_id="Pendulum-v1", pixels=False, vector_obs=False)
    with pytest.raises(ValueError, match="gymnasium.make"):
        drivers.make("gym", env_id="NoSuchEnv-v0")
    bad = [
        (dict(env_id="Pendulum-v1", g=9.81),
         "GymEnv 'env': unknown key 'g': known keys here are env_id, image_size, make_args, pixels, seed, vector_obs"),
        (dict(env_id="Pendulum-v1", image_size=[0, 64]),
         "GymEnv 'env': image_size[0] = 0 is out of range: allowed 1 to 4096"),
        (dict(env_id="Pendulum-v1", image_size=[64]),
         "GymEnv 'env': image_size = [64] has 1 values, not 2: give [height, width]"),
        (dict(env_id="Pendulum-v1", pixels="yes"), "GymEnv 'env': pixels = 'yes' is not a boolean: give true or false"),
        (dict(env_id="Pendulum-v1", make_args=[1]),
         "GymEnv 'env': make_args = [1] is not a dict: write it as a YAML mapping"),
        ({}, "GymEnv 'env': env_id is not given: set it to a Gymnasium id, e.g. env_id: Pendulum-v1"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError) as err:
            drivers.make("gym", **args)
        assert str(err.value) == message
    with pytest.raises(ValueError, match=r"^GymEnv 'env' \(Pendulum-v1\): gymnasium.make\('Pendulum-v1', "
                                         r"\*\*make_args\) failed: .*\bno_such_arg\b.*check make_args "
                                         r"\['no_such_arg'\]") as err:
        drivers.make("gym", env_id="Pendulum-v1", make_args={"no_such_arg": 1})
    assert "\n" not in str(err.value)


def test_make_args_reach_gymnasium_make_and_the_config_checks_the_args():
    env = connected(env_id="Pendulum-v1", make_args={"max_episode_steps": 3, "g": 2.0})
    assert env.env.unwrapped.g == 2.0
    for _ in range(3):
        env.command_action(np.zeros(1))
    assert env.read().values["truncated"][0] == 1.0                 # the time limit came from make_args
    base = cfg.load(CONFIGS / "gym_pendulum.yaml", ["robot.args.make_args={max_episode_steps: 50}"])
    assert base.robot.args["make_args"] == {"max_episode_steps": 50}
    with pytest.raises(cfg.ConfigError, match=r"^config: unknown key 'robot.args.max_episode_steps': known keys here "
                                              r"are env_id, image_size, make_args, pixels, seed, vector_obs$"):
        cfg.load(CONFIGS / "gym_pendulum.yaml", ["robot.args.max_episode_steps=50"])
    with pytest.raises(cfg.ConfigError, match=r"^config: robot.args: env_id is not given"):
        cfg.load(CONFIGS / "gym_pendulum.yaml", ["robot.args={pixels: true}"])


def test_resize_averages_areas_down_and_repeats_pixels_up():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    np.testing.assert_array_equal(resize_image(image, 2, 2)[..., 0], [[3, 5], [11, 13]])   # rounded means
    np.testing.assert_array_equal(resize_image(image[:2, :2], 4, 4)[..., 0],
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [4, 4, 5, 5], [4, 4, 5, 5]])


# ------------------------------------------------------------------------------------------------ task, safety, actor
def test_the_gym_task_takes_reward_and_episode_ends_from_the_env_and_hides_them_from_the_policy():
    task = tasks.make("gym", robot="env", cameras=[], episode_steps=1000, seed=0, args={"reward_scale": 0.5})
    reading_spec = {"env": {"state": ((3,), "float32"), **{key: ((1,), "float32") for key in SIGNALS}}}
    assert task.observation_spec(reading_spec) == {"state": ((3,), "float32")}
    obs = task.observe({"env": {"state": np.ones(3, np.float32), "reward": np.array([-4.0], np.float32),
                                "terminated": np.array([1.0], np.float32), "truncated": np.array([0.0], np.float32)}})
    assert set(obs) == {"state"}
    assert task.reward(obs) == -2.0 and task.is_terminal(obs) and not task.is_truncated(obs)
    obs = task.observe({"env": {"state": np.ones(3, np.float32), "reward": np.array([1.0], np.float32),
                                "terminated": np.array([0.0], np.float32), "truncated": np.array([1.0], np.float32)}})
    assert task.reward(obs) == 0.5 and not task.is_terminal(obs) and task.is_truncated(obs)
    assert not task.is_success(obs)
    obs = task.observe({"env": {"state": np.ones(3, np.float32), "reward": np.array([0.0], np.float32),
                                "terminated": np.array([0.0], np.float32), "truncated": np.array([0.0], np.float32),
                                "success": np.array([1.0], np.float32)}})
    assert set(obs) == {"state"} and task.is_success(obs)
    with pytest.raises(ValueError, match="robot.driver = gym"):
        task.observation_spec({"env": {"state": ((3,), "float32")}})


def test_sim_safety_clips_one_hots_and_holds_on_malformed_actions():
    continuous = SimSafety(2, discrete=False)
    command = continuous.command(np.array([0.5, 3.0]))
    np.testing.assert_array_equal(command.values["action"], [0.5, 1.0])
    assert command.kind == "action" and command.clipped and command.reasons == ("action_range",)
    held = continuous.command(np.array([np.nan, 0.0]), None, np.array([0.2, -0.2]))
    assert held.kind == "hold" and held.clipped and "invalid_action" in held.reasons
    np.testing.assert_array_equal(held.values["action"], [0.2, -0.2])
    np.testing.assert_array_equal(continuous.command(np.ones(3)).values["action"], [0.0, 0.0])   # wrong size
    np.testing.assert_array_equal(continuous.fallback("stop").values["action"], [0.0, 0.0])
    discrete = SimSafety(3, discrete=True)
    command = discrete.command(np.array([0.1, 0.7, -1.0]))
    np.testing.assert_array_equal(command.values["action"], [0, 1, 0])
    assert command.clipped and command.reasons == ("one_hot",)
    assert not discrete.command(np.array([0.0, 0.0, 1.0])).clipped
    np.testing.assert_array_equal(discrete.fallback("hold", None, None).values["action"], [1, 0, 0])
    np.testing.assert_array_equal(discrete.fallback("hold", None, np.array([0, 0, 1.0])).values["action"], [0, 0, 1])


def test_random_prefill_actions_are_one_hot_for_a_discrete_action():
    rng = np.random.default_rng(0)
    actions = np.stack([random_action(rng, 3, True) for _ in range(300)])
    assert actions.dtype == np.float32 and np.all(actions.sum(axis=1) == 1) and set(np.unique(actions)) == {0, 1}
    assert np.all(actions.sum(axis=0) > 60)                              # every choice is drawn
    continuous = random_action(np.random.default_rng(0), 4, False)
    np.testing.assert_array_equal(continuous, np.random.default_rng(0).uniform(-1, 1, 4).astype(np.float32))


# ------------------------------------------------------------------------------------------------ pacing config
class RealArm(drivers.MockArm):
    """Stands in for a hardware driver: not simulated."""

    simulated = False


if "test_real_arm" not in registry.names():
    registry.register("test_real_arm")(RealArm)


def test_pacing_defaults_to_realtime_and_the_gym_configs_use_lockstep():
    assert cfg.load(CONFIGS / "mock_arm.yaml").control.pacing == "realtime"
    for name in ("gym_pendulum.yaml", "gym_cartpole.yaml"):
        config = cfg.load(CONFIGS / name)
        assert (config.control.pacing, config.robot.driver, config.task.name) == ("lockstep", "gym", "gym")
    assert registry.is_simulated("gym") and registry.is_simulated("mock_arm") and registry.is_simulated("mock_camera")
    assert not registry.is_simulated("test_real_arm")


def test_lockstep_with_a_device_that_is_not_simulated_fails_in_one_line():
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(CONFIGS / "mock_arm.yaml", ["control.pacing=lockstep", "robot.driver=test_real_arm"])
    message = str(info.value)
    assert "\n" not in message and "robot.driver = 'test_real_arm'" in message and "realtime" in message
    with pytest.raises(cfg.ConfigError, match=r"cameras\[0\].driver = 'test_real_arm'"):
        # (the camera's args are a camera's, which the arm driver would refuse first: give it none)
        cfg.load(CONFIGS / "mock_arm.yaml", ["control.pacing=lockstep", "cameras.0.driver=test_real_arm",
                                             "cameras.0.args={}"])
    with pytest.raises(cfg.ConfigError, match="choose one of realtime, lockstep"):
        cfg.load(CONFIGS / "mock_arm.yaml", ["control.pacing=fast"])
    # A config built in code skips the loader's check; the daemon checks again before touching a device.
    config = cfg.load(CONFIGS / "mock_arm.yaml", ["robot.driver=test_real_arm"])
    config = dataclasses.replace(config, control=dataclasses.replace(config.control, pacing="lockstep"))
    with pytest.raises(ValueError, match="not a simulated driver"):
        Daemon(config)
    assert cfg.load(CONFIGS / "mock_arm.yaml", ["robot.driver=test_real_arm"]).control.pacing == "realtime"


def test_lockstep_clock_advances_one_period_per_tick_without_sleeping():
    real = iter(range(0, 10**9, 1000))
    clock = LockstepClock(20.0, real_now_ns=lambda: next(real))
    origin = clock.start()
    ticks = [clock.wait_next() for _ in range(4)]
    assert ticks == [(k, origin + k * 50_000_000) for k in range(1, 5)] and clock.now_ns() == origin + 200_000_000
    for _ in range(3):
        clock.stepped()
    assert clock.stats.summary()["period_error_ms"]["p50"] is None


# ------------------------------------------------------------------------------------------------ daemon
class Actor(Running):
    """test_daemon's daemon in a thread with a DEALER socket playing the actor; skips to a message kind."""

    def next_obs(self, kind=wire.Kind.OBS, timeout_ms=3000):
        while True:
            message = self.next_message(timeout_ms)
            if message.kind == kind:
                return message


def gym_config(config_name, *items):
    (port,) = free_tcp_ports(1)
    return cfg.load(CONFIGS / config_name, [f"network.control=tcp://127.0.0.1:{port}", *items])


@pytest.fixture
def cartpole():
    actor = Actor(gym_config("gym_cartpole.yaml", "control.rate_hz=2", "control.action_deadline_ms=100",
                             "control.watchdog_s=0.5"))
    yield actor
    actor.close()


def test_lockstep_steps_as_soon_as_the_action_arrives_and_resets_at_episode_ends(cartpole):
    hello = cartpole.hello()
    assert hello.meta["action_dim"] == 2 and hello.meta["action_discrete"] is True
    assert hello.meta["pacing"] == "lockstep" and hello.meta["robot"] == "sim"
    assert set(hello.meta["reading_spec"]["env"]) == {"state", *SIGNALS}
    obs = cartpole.next_obs()
    started, ticks, rewards, terminated_at = time.monotonic(), [], [], None
    for _ in range(60):                               # 60 steps at rate 2 Hz would take 30 s in realtime
        done = bool(obs.arrays["env/terminated"][0] or obs.arrays["env/truncated"][0])
        if done and terminated_at is None:
            terminated_at = obs.meta["tick"]
        cartpole.act(obs, [0.9, 0.1], reset=done)      # always push left: the pole falls within 60 steps
        following = cartpole.next_obs()
        assert following.meta["prev"]["late"] is False and following.meta["prev"]["tick"] == obs.meta["tick"]
        assert following.meta["prev"]["reset_done"] is done
        if not done:
            np.testing.assert_array_equal(following.arrays["prev_action"], [1, 0])   # the one-hot applied
            assert following.meta["prev"]["clipped"] is True
        ticks.append((following.meta["tick"], following.meta["t_tick_ns"]))
        rewards.append(float(following.arrays["env/reward"][0]))
        obs = following
    assert time.monotonic() - started < 10
    (tick0, t0), (tick1, t1) = ticks[0], ticks[-1]
    assert t1 - t0 == (tick1 - tick0) * 500_000_000          # simulated time: one period per step
    assert terminated_at is not None and cartpole.daemon.counters["resets"] >= 1
    assert 0.0 in rewards and 1.0 in rewards                 # 0 after a reset, 1 per CartPole step
    assert cartpole.daemon.counters["late_steps"] == 0 and cartpole.daemon.counters["watchdog_stops"] == 0


def test_lockstep_watchdog_stops_an_actor_that_sends_no_action(cartpole):
    cartpole.hello()
    cartpole.next_obs()
    deadline = time.monotonic() + 3.0
    while cartpole.daemon.counters["watchdog_stops"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cartpole.daemon.counters["watchdog_stops"] == 1
    while cartpole.socket.poll(50):
        cartpole.socket.recv_multipart()
    assert not cartpole.socket.poll(300), "the daemon kept sending observations to a silent actor"
    assert cartpole.daemon.counters["late_steps"] == 0
    assert cartpole.hello().kind == wire.Kind.HELLO                 # served again after a new hello
    obs = cartpole.next_obs()
    cartpole.act(obs, [0, 1])
    assert cartpole.next_obs().meta["prev"]["late"] is False


def test_lockstep_gives_the_mocks_the_simulated_clock():
    actor = Actor(gym_config("mock_arm.yaml", "control.pacing=lockstep", "control.watchdog_s=1.0",
                             "control.realtime=off"))
    try:
        actor.hello()
        obs = actor.next_obs()
        times = []
        for _ in range(20):
            actor.act(obs, np.ones(6))
            obs = actor.next_obs()
            times.append((obs.meta["t_tick_ns"], obs.meta["devices"]["arm"]["hw_time_ns"]))
        period_ns = 40_000_000                                   # mock_arm.yaml runs at 25 Hz
        assert all(b[0] - a[0] == period_ns for a, b in zip(times, times[1:]))
        # The arm's own clock (offset and drift aside) advances with the simulated ticks, not with real time.
        hw_steps = [b[1] - a[1] for a, b in zip(times, times[1:])]
        assert all(abs(step - period_ns) < 2_000_000 for step in hw_steps)
        assert actor.daemon.counters["stale_readings"] == 0 and actor.daemon.scheduling.endswith("(lockstep pacing)")
    finally:
        actor.close()


def test_a_realtime_gym_robot_still_ticks_on_the_clock():
    actor = Actor(gym_config("gym_pendulum.yaml", "control.pacing=realtime", "control.rate_hz=50",
                             "control.action_deadline_ms=15", "control.realtime=off"))
    try:
        assert actor.hello().meta["action_discrete"] is False
        obs = actor.next_obs()
        started = time.monotonic()
        for _ in range(10):
            actor.act(obs, [0.5])
            obs = actor.next_obs()
            np.testing.assert_allclose(obs.arrays["prev_action"], [0.5])
        assert time.monotonic() - started > 0.15                  # 10 periods of 20 ms
        assert actor.daemon.counters["late_steps"] == 0
    finally:
        actor.close()


# ------------------------------------------------------------------------------------------------ learner hand-off
def test_a_discrete_robot_gets_a_discrete_agent_and_policy(tmp_path):
    from learner.trainer import Trainer
    from robotd import steps

    config = gym_config("gym_cartpole.yaml")
    spec = steps.step_spec({"state": ((4,), "float32")}, 2, ["env"])
    for discrete in (True, False):
        trainer = Trainer(config, spec, "cpu", tmp_path, action_discrete=discrete)
        assert trainer.agent.discrete is discrete and trainer.agent.actor.discrete is discrete
        # Logits per choice when discrete; a mean and a spread per action dimension otherwise.
        assert trainer.agent.actor.out.out_features == (2 if discrete else 4)


def test_a_lockstep_actor_waits_for_the_learner_only_past_prefill_and_within_the_ratio(tmp_path):
    from actor.loop import Actor as ActorProcess
    config = cfg.load(CONFIGS / "gym_pendulum.yaml", ["actor.prefill_steps=100", "learner.min_replay_steps=200",
                                                      "learner.train_ratio=8", "learner.batch_size=4",
                                                      "learner.batch_length=16", "learner.publish_every_updates=2"])
    actor = ActorProcess(config, logdir=str(tmp_path))
    actor.pending = None
    slack = 3 * 64                                    # one publish interval and one update
    actor.counters["env_steps"] = 199                 # below min_replay_steps: never waits
    assert not actor._learner_behind()
    actor.counters["env_steps"] = 200 + 20            # 8 * 20 = 160 wanted: within the slack, no wait yet
    assert not actor._learner_behind()
    actor.counters["env_steps"] = 200 + 200           # 8 * 200 = 1600 replayed steps wanted since training began
    assert actor._learner_behind()
    # The learner's own count, published with its weights, releases the actor; the version number alone does not.
    actor.policy_version, actor.learner_replayed = 10_000, 1600 - slack - 1
    assert actor._learner_behind()
    actor.learner_replayed = 1600 - slack
    assert not actor._learner_behind()
    actor.policy_version = 0
    realtime = dataclasses.replace(config, control=dataclasses.replace(config.control, pacing="realtime"))
    assert not ActorProcess(realtime, logdir=str(tmp_path))._learner_behind()      # a real robot never waits
    no_ratio = dataclasses.replace(config, learner=dataclasses.replace(config.learner, train_ratio=0.0))
    assert not ActorProcess(no_ratio, logdir=str(tmp_path))._learner_behind()
