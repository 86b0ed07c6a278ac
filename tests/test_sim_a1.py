"""The MuJoCo A1 as a simulated Legged driver (drivers/sim/sim_a1.py), with its configs and the a1 tasks."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import requires  # noqa: E402
requires.mujoco()

import drivers  # noqa: E402
from drivers import registry  # noqa: E402
from drivers.sim.mock import MockLegged  # noqa: E402
from drivers.sim.sim_a1 import SimA1, quat_to_rpy  # noqa: E402
from robotd import config as config_mod  # noqa: E402
from robotd import tasks  # noqa: E402
from robotd.daemon.safety import LeggedLimits, LeggedSafety  # noqa: E402
from tests.clocks import FakeClock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000
PERIOD_NS = 50 * MS  # 20 Hz, as the configs
FAST = ["--set", "control.rate_hz=50", "--set", "control.action_deadline_ms=15", "--set", "actor.prefill_steps=100",
        "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4", "--set", "learner.batch_length=16",
        "--set", "learner.publish_every_updates=2", "--set", "learner.profile=",   # plumbing only: the tiny default model
        # A session this short can end before a loaded machine has the learner up: the actor waits for its acks.
        "--set", "actor.drain_timeout_s=90"]
STAND_CONFIG = config_mod.load(ROOT / "configs" / "sim_a1_stand.yaml")
KP, KD = STAND_CONFIG.safety.legged.kp, STAND_CONFIG.safety.legged.kd
ZEROS = np.zeros(12)


def robot(clock: FakeClock, **kwargs) -> SimA1:
    device = SimA1(host_clock=clock, **kwargs)
    device.connect()
    return device


def hold(device: SimA1, q: np.ndarray, kp: float = KP, kd: float = KD) -> None:
    device.command_motors(q, ZEROS, np.full(12, kp), np.full(12, kd), ZEROS)


def test_registered_simulated_and_lazy() -> None:
    assert "sim_a1" in drivers.names() and registry.is_simulated("sim_a1")
    code = "import sys, drivers; assert 'sim_a1' in drivers.names(); print('mujoco' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_reading_spec_extends_mock_legged_and_read_matches_it() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs = robot(clock, noise_std=0.002)
    spec = legs.reading_spec()
    mock_spec = MockLegged().reading_spec()
    assert {key: spec[key] for key in mock_spec} == mock_spec
    assert set(spec) - set(mock_spec) == {"imu_gyro", "scene_base_vel", "scene_base_height"}
    reading = legs.read()
    for key, (shape, dtype) in spec.items():
        assert reading.values[key].shape == shape and reading.values[key].dtype == np.dtype(dtype), key
    assert reading.domain == "hardware_clock" and reading.host_time_ns == clock.ns
    assert legs.n_motors == 12 and legs.joint_limits_rad.shape == (12, 2)
    np.testing.assert_array_equal(legs.stand_q_rad, np.tile([0.0, 0.9, -1.8], 4))
    lower, upper = legs.joint_limits_rad[:, 0], legs.joint_limits_rad[:, 1]
    assert np.all(legs.stand_q_rad > lower) and np.all(legs.stand_q_rad < upper)
    # Standing at rest: all four feet down, level, at the A1's standing height.
    np.testing.assert_array_equal(reading.values["foot_contact"], np.ones(4))
    assert 0.2 < reading.values["scene_base_height"][0] < 0.35
    assert np.all(np.abs(reading.values["imu_rpy"][:2]) < 0.05)
    assert int(reading.values["tick"][0]) == (reading.hw_time_ns // MS) % 2**32


def test_stands_for_two_seconds_under_its_pd_controller_and_sags_when_damped() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs = robot(clock)
    for _ in range(40):  # 2 s at 20 Hz
        hold(legs, legs.stand_q_rad)
        clock.tick()
        values = legs.read().values
        assert values["scene_base_height"][0] > 0.2
        assert legs.sim.tilt_rad() < 0.1
    assert legs.sim.time_s >= 2.0
    np.testing.assert_allclose(values["joint_pos"], legs.stand_q_rad, atol=0.15)
    standing = float(values["scene_base_height"][0])
    legs.damp()
    clock.advance(1500 * MS)
    assert legs.read().values["scene_base_height"][0] < standing - 0.05
    assert not legs.status().fallen  # sagging onto its belly is not a fall


def test_status_reports_a_fall_as_a_state_and_disconnection_as_not_ok() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    back = robot(clock, start="back")
    status = back.status()
    assert status.fallen and status.ok and status.fault is None
    assert abs(abs(back.read().values["imu_rpy"][0]) - math.pi) < 0.2
    for start in ("stand", "lying"):
        assert not robot(clock, start=start).status().fallen, start
    back.disconnect()
    status = back.status()
    assert not status.ok and "not connected" in status.fault
    with pytest.raises(RuntimeError, match="connect"):
        back.read()


def test_command_latency_delays_the_effect_by_exactly_the_latency() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    delayed, twin = robot(clock, command_latency_s=0.05), robot(clock, command_latency_s=0.05)
    clock.advance(10 * MS)
    target = delayed.stand_q_rad + np.tile([0.0, 0.4, 0.0], 4)
    hold(delayed, target)
    hold(twin, twin.stand_q_rad)
    clock.advance(50 * MS)  # due now; its torque acts from the next physics step on
    np.testing.assert_array_equal(delayed.read().values["joint_vel"], twin.read().values["joint_vel"])
    clock.advance(2 * MS)
    assert not np.array_equal(delayed.read().values["joint_vel"], twin.read().values["joint_vel"])
    clock.advance(100 * MS)
    moved = delayed.read().values["joint_pos"] - twin.read().values["joint_pos"]
    assert np.all(moved[1::3] > 0.05)


@pytest.mark.parametrize("inner_rate_hz, effect_ms", [(100.0, 10), (1000.0, 3)])
def test_a_command_is_latched_at_the_next_inner_tick(inner_rate_hz: float, effect_ms: int) -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs, twin = robot(clock, inner_rate_hz=inner_rate_hz), robot(clock, inner_rate_hz=inner_rate_hz)
    clock.advance(3 * MS)  # between two 10 ms ticks of a 100 Hz inner loop
    hold(legs, legs.stand_q_rad + 0.3)
    clock.ns = twin._origin_ns + effect_ms * MS
    np.testing.assert_array_equal(legs.read().values["joint_vel"], twin.read().values["joint_vel"])
    clock.advance(1 * MS)
    assert not np.array_equal(legs.read().values["joint_vel"], twin.read().values["joint_vel"])


def test_lost_commands_never_take_effect() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    lossy, twin = robot(clock, command_loss=0.999, seed=3), robot(clock)
    for _ in range(20):
        hold(lossy, lossy.stand_q_rad + 0.3)
        clock.tick()
    assert lossy.commands_sent == 20 and lossy.commands_lost == 20
    np.testing.assert_array_equal(lossy.read().values["joint_pos"], twin.read().values["joint_pos"])
    half = robot(clock, command_loss=0.5, seed=1)
    for _ in range(40):
        hold(half, half.stand_q_rad)
    assert 5 < half.commands_lost < 35


def test_sensor_latency_reports_the_state_captured_that_long_ago() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    late, live = robot(clock, sensor_latency_s=0.03), robot(clock)
    late.damp()
    live.damp()  # sagging: the state changes every step
    seen = {}
    for _ in range(60):
        clock.advance(2 * MS)
        reading = live.read()
        seen[reading.hw_time_ns] = reading.values
        delayed = late.read()
    assert clock.ns - delayed.hw_time_ns == 30 * MS
    assert delayed.host_time_ns == clock.ns
    for key in ("joint_pos", "joint_vel", "imu_rpy", "scene_base_height"):
        np.testing.assert_array_equal(delayed.values[key], seen[delayed.hw_time_ns][key], err_msg=key)
    assert not np.array_equal(delayed.values["joint_pos"], reading.values["joint_pos"])


def test_sensor_jitter_delays_readings_without_reordering_them() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs = robot(clock, sensor_latency_s=0.01, latency_jitter_s=0.01, seed=2)
    lags, last = [], -1
    for _ in range(50):
        clock.advance(2 * MS)
        reading = legs.read()
        assert reading.hw_time_ns >= last
        last = reading.hw_time_ns
        lags.append(clock.ns - reading.hw_time_ns)
    lags = lags[15:]  # before 20 ms have passed the oldest snapshot is the one taken at connect()
    assert min(lags) >= 10 * MS and max(lags) <= 22 * MS and len(set(lags)) > 2


def test_device_clock_offset_and_drift_show_in_hardware_time() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs = robot(clock, clock_offset_s=100.0, clock_drift_ppm=1000.0)
    first = legs.read()
    clock.advance(10_000 * MS)
    second = legs.read()
    drift_ns = (second.hw_time_ns - first.hw_time_ns) - (second.host_time_ns - first.host_time_ns)
    assert drift_ns == 10 * MS
    assert first.hw_time_ns - first.host_time_ns == 100 * 1_000_000_000 + round(first.host_time_ns * 1e-3)


def test_noise_is_seeded_and_leaves_scene_readings_exact() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    a, b, clean = (robot(clock, noise_std=0.01, seed=5), robot(clock, noise_std=0.01, seed=5), robot(clock))
    errors = []
    for _ in range(100):
        ra, rb, rc = a.read(), b.read(), clean.read()
        np.testing.assert_array_equal(ra.values["joint_pos"], rb.values["joint_pos"])
        errors.append(ra.values["joint_pos"] - rc.values["joint_pos"])
        for key in ("scene_base_vel", "scene_base_height", "foot_contact"):
            np.testing.assert_array_equal(ra.values[key], rc.values[key])
    assert 0.008 < float(np.std(errors)) < 0.012
    assert not np.array_equal(robot(clock, noise_std=0.01, seed=6).read().values["joint_pos"],
                              robot(clock, noise_std=0.01, seed=5).read().values["joint_pos"])


def test_scene_base_vel_is_forward_positive_in_the_heading_frame() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs = robot(clock)
    sim = legs.sim
    sim.data.qvel[0:3] = (0.7, 0.0, 0.0)  # pushed along world x, the trunk facing +x
    vel = legs.read().values["scene_base_vel"]
    np.testing.assert_allclose(vel, [0.7, 0.0, 0.0], atol=1e-6)
    # Turned to face world +y (yaw 90 degrees): a push along world y is forward, along world x is to its right.
    half = math.sqrt(0.5)
    sim.data.qpos[3:7] = (half, 0.0, 0.0, half)
    sim.data.qvel[0:3] = (0.2, 0.5, 0.0)
    drivers.sim.mujoco_sim.mujoco.mj_forward(sim.model, sim.data)
    vel = legs.read().values["scene_base_vel"]
    np.testing.assert_allclose(vel, [0.5, -0.2, 0.0], atol=1e-6)
    assert legs.read().values["imu_rpy"][2] == pytest.approx(math.pi / 2, abs=1e-5)


def test_quat_to_rpy_matches_known_rotations() -> None:
    np.testing.assert_allclose(quat_to_rpy([1, 0, 0, 0]), [0, 0, 0])
    np.testing.assert_allclose(quat_to_rpy([0, 1, 0, 0]), [math.pi, 0, 0], atol=1e-12)
    c, s = math.cos(0.15), math.sin(0.15)
    np.testing.assert_allclose(quat_to_rpy([c, 0, s, 0]), [0, 0.3, 0], atol=1e-12)


def test_damp_bypasses_latency_and_drops_commands_in_flight_and_reset_restores_the_start() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs, twin = robot(clock, command_latency_s=0.05), robot(clock, command_latency_s=0.05)
    hold(legs, legs.stand_q_rad + 0.3)
    legs.damp()
    twin.damp()
    clock.advance(200 * MS)
    np.testing.assert_array_equal(legs.read().values["joint_pos"], twin.read().values["joint_pos"])
    lying = robot(clock, start="lying", reset_noise_rad=0.05, seed=4)
    start_q = lying.read().values["joint_pos"]
    hold(lying, lying.stand_q_rad)
    clock.advance(1000 * MS)
    assert lying.read().values["scene_base_height"][0] > 0.15  # it stood up
    lying.reset()
    after = lying.read().values
    assert after["scene_base_height"][0] < 0.12
    assert 0.001 < np.max(np.abs(after["joint_pos"] - start_q)) < 0.3  # a fresh draw of the reset noise


def test_command_motors_rejects_bad_shapes_values_and_gains_in_one_line() -> None:
    legs = robot(FakeClock(period_ns=PERIOD_NS))
    bad = [
        (dict(q=np.zeros(11)), "q_rad must have shape"),
        (dict(q=np.full(12, np.nan)), "q_rad must be finite"),
        (dict(kp=np.full(12, -1.0)), "kp must be >= 0"),
        (dict(kd=np.full(12, -0.1)), "kd must be >= 0"),
    ]
    for args, match in bad:
        q = args.get("q", legs.stand_q_rad)
        with pytest.raises(ValueError, match=match) as err:
            legs.command_motors(q, ZEROS, args.get("kp", np.full(12, KP)), args.get("kd", np.full(12, KD)), ZEROS)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(noise_std=-1.0), "noise_std"),
    (dict(inner_rate_hz=0.0), "inner_rate_hz"),
    (dict(inner_rate_hz=5000.0), "inner_rate_hz"),
    (dict(command_latency_s=-0.1), "command_latency_s"),
    (dict(sensor_latency_s=float("nan")), "sensor_latency_s"),
    (dict(latency_jitter_s="x"), "latency_jitter_s"),
    (dict(command_loss=1.0), "command_loss"),
    (dict(fall_tilt_rad=0.0), "fall_tilt_rad"),
    (dict(start="sitting"), "start"),
    (dict(reset_noise_rad=-0.01), "reset_noise_rad"),
    (dict(clock_drift_ppm=float("inf")), "clock_drift_ppm"),
    (dict(seed=1.5), "seed"),
    (dict(name=""), "name"),
])
def test_bad_constructor_args_give_one_line_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        SimA1(**kwargs)
    assert "\n" not in str(err.value)


def test_args_are_checked_against_the_args_dataclass_in_one_line() -> None:
    with pytest.raises(ValueError) as err:
        SimA1(command_latency_ms=5)
    assert str(err.value).startswith("SimA1 'legs': unknown key 'command_latency_ms': known keys here are ")
    assert "command_latency_s" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError) as err:
        SimA1(name="front", inner_rate_hz=5000.0)
    assert str(err.value) == "SimA1 'front': inner_rate_hz = 5000.0 is out of range: allowed 1.0 to 1000.0"
    with pytest.raises(ValueError, match=r"start = 'sitting' is not allowed: choose one of stand, lying, back"):
        SimA1(start="sitting")
    # The config's args are checked against the same dataclass before anything is built.
    with pytest.raises(config_mod.ConfigError, match=r"^config: robot.args.command_loss = 1.0 is out of range"):
        config_mod.load(ROOT / "configs" / "sim_a1_stand.yaml", ["robot.args.command_loss=1.0"])
    settings = SimA1.settings({"start": "back", "seed": 4}, "test")
    assert (settings.start, settings.seed, settings.inner_rate_hz) == ("back", 4, 500.0)


def test_a_control_tick_is_cheap() -> None:
    clock = FakeClock(period_ns=PERIOD_NS)
    legs = robot(clock, noise_std=0.002, command_latency_s=0.005)
    costs = []
    for _ in range(60):
        start = time.perf_counter()
        clock.tick()
        legs.read()
        hold(legs, legs.stand_q_rad)
        legs.status()
        costs.append(time.perf_counter() - start)
    median_ms = float(np.median(costs[10:])) * 1e3
    print(f"sim_a1 control tick (read + command + status, 50 physics steps): {median_ms:.2f} ms median")
    assert median_ms < 20.0  # about 1.5 ms on an idle core; the bound leaves room for a loaded machine


@pytest.mark.parametrize("path", ["sim_a1_stand.yaml", "sim_a1_walk.yaml"])
def test_the_configs_safety_and_task_run_a_short_loop(path: str) -> None:
    cfg = config_mod.load(ROOT / "configs" / path)
    assert cfg.robot.driver == "sim_a1" and not cfg.cameras and cfg.control.pacing == "lockstep"
    legged = cfg.safety.legged
    clock = FakeClock(period_ns=PERIOD_NS)
    legs = robot(clock, **cfg.robot.args)
    limits = LeggedLimits(joint_limits_rad=legs.joint_limits_rad, action_scale_rad=legged.action_scale_rad,
                          max_delta_rad=legged.max_delta_rad, kp_max=legged.kp_max, kd_max=legged.kd_max,
                          tau_max_nm=legged.tau_max_nm, kp=legged.kp, kd=legged.kd,
                          max_tilt_rad=legged.max_tilt_rad, action_filter=legged.action_filter)
    safety = LeggedSafety(limits, legs.stand_q_rad, 1.0 / cfg.control.rate_hz)
    # The whole action range stays inside the joint limits.
    lower, upper = legs.joint_limits_rad[:, 0], legs.joint_limits_rad[:, 1]
    assert np.all(legs.stand_q_rad - legged.action_scale_rad > lower)
    assert np.all(legs.stand_q_rad + legged.action_scale_rad < upper)
    task = tasks.make(cfg.task.name, robot="legs", cameras=[], episode_steps=cfg.task.episode_steps,
                      seed=0, args=cfg.task.args)
    assert task.reset_request is False
    spec = task.observation_spec({"legs": legs.reading_spec()})
    rng = np.random.default_rng(0)
    last_target, rewards = None, []
    for _ in range(100):
        values = legs.read().values
        obs = task.observe({"legs": values})
        assert set(obs) == set(spec)
        rewards.append(task.reward(obs))
        command = safety.command(rng.uniform(-1, 1, 12), values["joint_pos"], last_target, values["imu_rpy"])
        assert command.kind == "motors"  # max_tilt_rad = pi: never damped
        v = command.values
        legs.command_motors(v["q_rad"], v["dq_rad_s"], v["kp"], v["kd"], v["tau_nm"])
        last_target = v["q_rad"]
        clock.advance(round(1e9 / cfg.control.rate_hz))
    bound = 4.0 if cfg.task.name == "a1_stand" else 14.0
    assert all(0.0 <= r <= bound for r in rewards) and max(rewards) > 0.5


def test_train_session_on_sim_a1_stand(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "sim_a1_stand.yaml"),
            "--steps", "200", "--logdir", str(logdir), *FAST]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["env_steps"] == 200
    assert summary["logged_steps"] == summary["ingested_steps"] == 200
    assert summary["lost_steps"] == 0 and summary["pacing"] == "lockstep"
    print(f"sim_a1 lockstep session: {summary['control_rate_hz']:.1f} steps/s over {summary['wall_s']} s")
