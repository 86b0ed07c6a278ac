"""Specification of the mock devices, the device clock and the driver registry."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pytest

from drivers import DeviceClock, MockArm, MockCamera, MockLegged, Reading, make, names, register

START_NS = 1_000_000_000


class FakeHostClock:
    """A host clock the test moves by hand, in integer nanoseconds."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)


def connected(cls, clock: FakeHostClock, **kwargs):
    """A mock of class cls on the fake clock, connected now."""
    device = cls(host_clock=clock, **kwargs)
    device.connect()
    return device


def age_ns(device, reading: Reading) -> int:
    """How old a reading was when received, on the device's own clock."""
    return device.clock.to_device_ns(reading.host_time_ns) - reading.hw_time_ns


def assert_same_readings(first: list[Reading], second: list[Reading]) -> None:
    """Two reading sequences agree exactly: timestamps, frame numbers and every value."""
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert (a.hw_time_ns, a.host_time_ns, a.frame_number) == (b.hw_time_ns, b.host_time_ns, b.frame_number)
        assert a.values.keys() == b.values.keys()
        for key in a.values:
            np.testing.assert_array_equal(a.values[key], b.values[key])


def fingerprint(readings: list[Reading]) -> list[tuple]:
    """Everything a reading sequence holds, in a form that compares with ==."""
    return [
        (r.hw_time_ns, r.host_time_ns, r.frame_number, [(key, array.tobytes()) for key, array in r.values.items()])
        for r in readings
    ]


def drive_arm(seed: int) -> list[Reading]:
    """A fixed command script on a noisy arm."""
    clock = FakeHostClock()
    arm = connected(MockArm, clock, seed=seed, noise_std=0.01)
    arm.reset()
    readings = []
    for step in range(20):
        clock.advance(0.02)
        arm.command_joint_position(arm.home_q_rad + 0.01 * step)
        readings.append(arm.read())
    return readings


def drive_legged(seed: int) -> list[Reading]:
    """A fixed command script on a noisy quadruped."""
    clock = FakeHostClock()
    robot = connected(MockLegged, clock, seed=seed, noise_std=0.01)
    robot.reset()
    readings = []
    for step in range(20):
        clock.advance(0.02)
        robot.command_motors(robot.stand_q_rad + 0.01 * step, 0.0, 40.0, 1.0, 0.0)
        readings.append(robot.read())
    return readings


def drive_camera(seed: int) -> list[Reading]:
    """A noisy camera watching a moving blob."""
    clock = FakeHostClock()
    camera = connected(MockCamera, clock, seed=seed, noise_std=3.0, depth=True)
    camera.set_scene(lambda: ((clock.now_ns - START_NS) / 1e9 % 1.0, 0.5))
    readings = []
    for _ in range(10):
        clock.advance(0.05)
        readings.append(camera.read())
    return readings


# --- device clock ---------------------------------------------------------------------------


def test_device_clock_adds_offset_and_drift_to_host_time():
    clock = DeviceClock(offset_s=2.5, drift_ppm=100.0, host_clock=lambda: 0)
    assert clock.to_device_ns(10_000_000_000) == 2_500_000_000 + 10_000_000_000 + 1_000_000


def test_device_clock_now_reads_the_host_clock():
    host = FakeHostClock(start_ns=7_000_000_000)
    clock = DeviceClock(offset_s=-1.0, host_clock=host)
    assert clock.now_ns() == 6_000_000_000
    host.advance(1.0)
    assert clock.now_ns() == 7_000_000_000


def test_device_clock_keeps_nanosecond_resolution_for_large_host_times():
    clock = DeviceClock(drift_ppm=1.0)
    host_ns = 2**60 + 1
    assert clock.to_device_ns(host_ns) - clock.to_device_ns(host_ns - 1) == 1


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("drive", [drive_arm, drive_legged, drive_camera])
def test_same_seed_and_commands_give_identical_readings(drive):
    assert_same_readings(drive(seed=3), drive(seed=3))


@pytest.mark.parametrize("drive", [drive_arm, drive_legged, drive_camera])
def test_different_seeds_give_different_readings(drive):
    assert fingerprint(drive(seed=3)) != fingerprint(drive(seed=4))


# --- timestamps -----------------------------------------------------------------------------


def test_hw_time_shows_clock_offset_and_drift():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, clock_offset_s=5.0, clock_drift_ppm=200.0, sensor_latency_s=0.0, latency_jitter_s=0.0)
    for _ in range(3):
        clock.advance(10.0)
        reading = arm.read()
        expected_ns = 5_000_000_000 + reading.host_time_ns + round(reading.host_time_ns * 200e-6)
        assert reading.hw_time_ns == expected_ns


def test_readings_are_captured_one_transport_latency_before_receipt():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, sensor_latency_s=0.001, latency_jitter_s=0.0002)
    ages_ns = []
    for _ in range(50):
        clock.advance(0.02)
        reading = arm.read()
        assert reading.host_time_ns == clock.now_ns
        ages_ns.append(age_ns(arm, reading))
    assert min(ages_ns) >= 1_000_000 and max(ages_ns) <= 1_200_000
    assert len(set(ages_ns)) > 1


def test_jitter_never_makes_hw_time_go_backwards():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, latency_jitter_s=0.005)
    hw_times_ns = []
    for _ in range(50):
        clock.now_ns += 100_000  # reads closer together than the jitter
        hw_times_ns.append(arm.read().hw_time_ns)
    assert hw_times_ns == sorted(hw_times_ns)


def test_mock_readings_use_the_hardware_clock_domain():
    clock = FakeHostClock()
    for cls in (MockArm, MockLegged, MockCamera):
        assert connected(cls, clock).read().domain == "hardware_clock"


@pytest.mark.parametrize(
    "device_kwargs", [(MockArm, {}), (MockArm, {"dof": 3}), (MockLegged, {}), (MockCamera, {"depth": True})]
)
def test_read_values_match_reading_spec(device_kwargs):
    cls, kwargs = device_kwargs
    device = connected(cls, FakeHostClock(), **kwargs)
    values = device.read().values
    spec = device.reading_spec()
    assert values.keys() == spec.keys()
    for key, (shape, dtype) in spec.items():
        assert values[key].shape == shape and values[key].dtype == np.dtype(dtype)


# --- noise ----------------------------------------------------------------------------------


def test_arm_sensor_noise_has_the_configured_std():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, noise_std=0.01)
    errors_rad = []
    for _ in range(1000):
        clock.advance(0.002)
        errors_rad.append(arm.read().values["joint_pos"] - arm.home_q_rad)
    assert np.std(errors_rad) == pytest.approx(0.01, rel=0.1)


def test_camera_pixel_noise_has_the_configured_std():
    clock = FakeHostClock()
    clean = connected(MockCamera, clock)
    noisy = connected(MockCamera, clock, noise_std=4.0)
    clock.advance(0.1)
    difference = noisy.read().values["image"].astype(float) - clean.read().values["image"]
    assert np.std(difference) == pytest.approx(4.0, rel=0.1)


def test_zero_noise_reads_the_exact_state():
    arm = connected(MockArm, FakeHostClock())
    np.testing.assert_array_equal(arm.read().values["joint_pos"], arm.home_q_rad.astype(np.float32))


# --- faults shared by every mock ------------------------------------------------------------


@pytest.mark.parametrize("cls", [MockArm, MockLegged, MockCamera])
def test_frozen_sensor_repeats_values_and_hw_time_until_it_thaws(cls):
    clock = FakeHostClock()
    device = connected(cls, clock)
    if cls is MockArm:
        device.command_joint_velocity(np.full(6, 0.5))
    if cls is MockLegged:
        device.command_motors(device.stand_q_rad, 0.0, 20.0, 1.0, 0.0)
    clock.advance(0.1)
    before = device.read()
    device.inject_frozen(0.5)
    for _ in range(4):
        clock.advance(0.1)
        stale = device.read()
        assert stale.hw_time_ns == before.hw_time_ns
        assert stale.host_time_ns == clock.now_ns
        assert stale.frame_number == before.frame_number
        for key in before.values:
            np.testing.assert_array_equal(stale.values[key], before.values[key])
    clock.advance(0.2)
    assert device.read().hw_time_ns > before.hw_time_ns


def test_frozen_reading_values_are_copies():
    clock = FakeHostClock()
    arm = connected(MockArm, clock)
    before = arm.read()
    arm.inject_frozen(1.0)
    arm.read().values["joint_pos"][:] = 99.0
    assert not np.any(arm.read().values["joint_pos"] == 99.0)
    np.testing.assert_array_equal(arm.read().values["joint_pos"], before.values["joint_pos"])


@pytest.mark.parametrize("cls", [MockArm, MockLegged])
def test_late_reading_is_older_by_the_delay_and_the_next_is_on_time(cls):
    clock = FakeHostClock()
    device = connected(cls, clock, sensor_latency_s=0.001, latency_jitter_s=0.0)
    clock.advance(0.5)
    assert age_ns(device, device.read()) == 1_000_000
    device.inject_late(0.050)
    clock.advance(0.02)
    assert age_ns(device, device.read()) == 51_000_000
    clock.advance(0.02)
    assert age_ns(device, device.read()) == 1_000_000


def test_late_camera_frame_carries_its_old_capture_time():
    clock = FakeHostClock()
    camera = connected(MockCamera, clock, latency_jitter_s=0.0)
    clock.advance(1.0)
    on_time = camera.read()
    assert age_ns(camera, on_time) < 34_000_000  # under a frame period plus latency
    camera.inject_late(0.200)
    clock.advance(0.001)
    late = camera.read()
    assert age_ns(camera, late) >= 200_000_000
    assert late.frame_number < on_time.frame_number


@pytest.mark.parametrize("cls", [MockArm, MockLegged, MockCamera])
def test_scheduled_freeze_starts_and_ends_relative_to_connect(cls):
    clock = FakeHostClock()
    device = connected(cls, clock, faults={"frozen_at_s": 1.0, "frozen_for_s": 0.5})
    clock.advance(0.9)
    before = device.read()
    clock.advance(0.2)
    assert device.read().hw_time_ns == before.hw_time_ns
    clock.advance(0.3)
    assert device.read().hw_time_ns == before.hw_time_ns
    clock.advance(0.2)
    assert device.read().hw_time_ns > before.hw_time_ns


def test_scheduled_late_reading_fires_after_its_time():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, latency_jitter_s=0.0, faults={"late_at_s": 1.0, "late_s": 0.030})
    clock.advance(0.5)
    assert age_ns(arm, arm.read()) == 1_000_000
    clock.advance(0.6)
    assert age_ns(arm, arm.read()) == 31_000_000


def test_unknown_fault_key_is_rejected_naming_it_and_the_allowed_keys():
    with pytest.raises(ValueError, match="'frozen_at'.*allowed keys: frozen_at_s, frozen_for_s"):
        MockArm(faults={"frozen_at": 1.0})


def test_fault_key_not_supported_by_that_mock_is_rejected():
    with pytest.raises(ValueError, match="'fall_at_s'"):
        MockArm(faults={"fall_at_s": 1.0})


def test_fault_without_its_parameter_is_rejected():
    with pytest.raises(ValueError, match="'frozen_at_s' needs 'frozen_for_s'"):
        MockCamera(faults={"frozen_at_s": 1.0})


# --- arm ------------------------------------------------------------------------------------


def test_arm_tracks_a_joint_position_target():
    clock = FakeHostClock()
    arm = connected(MockArm, clock)
    target_rad = np.array([0.3, -1.2, 1.0, -1.4, -1.6, 0.5])
    for _ in range(50):
        arm.command_joint_position(target_rad)
        clock.advance(0.02)
    reading = arm.read()
    np.testing.assert_allclose(reading.values["joint_pos"], target_rad, atol=1e-4)
    np.testing.assert_allclose(reading.values["joint_vel"], 0.0, atol=1e-3)


def test_arm_motion_is_the_same_at_any_control_rate():
    final_q = []
    for period_s in (0.001, 0.02):
        clock = FakeHostClock()
        arm = connected(MockArm, clock, sensor_latency_s=0.0, latency_jitter_s=0.0)
        arm.command_joint_position(arm.home_q_rad + np.array([1.0, 0.2, -0.1, 0.0, 0.05, -2.0]))
        for _ in range(round(0.4 / period_s)):
            clock.advance(period_s)
            reading = arm.read()
        final_q.append(reading.values["joint_pos"])
    np.testing.assert_allclose(final_q[0], final_q[1], atol=1e-6)


def test_arm_joint_speed_is_capped_at_max_velocity():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, max_vel_rad_s=1.0, sensor_latency_s=0.0, latency_jitter_s=0.0)
    arm.command_joint_position(arm.home_q_rad + np.array([2.0, 0, 0, 0, 0, 0]))
    clock.advance(0.5)
    reading = arm.read()
    assert reading.values["joint_pos"][0] == pytest.approx(0.5, abs=1e-6)
    assert reading.values["joint_vel"][0] == pytest.approx(1.0, abs=1e-6)


def test_arm_velocity_command_moves_at_that_velocity_and_stop_holds_still():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, sensor_latency_s=0.0, latency_jitter_s=0.0)
    arm.command_joint_velocity(np.array([0.2, 0, 0, 0, 0, 0]))
    clock.advance(1.0)
    assert arm.read().values["joint_vel"][0] == pytest.approx(0.2, abs=1e-6)
    arm.stop()
    clock.advance(1.0)
    stopped = arm.read()
    clock.advance(1.0)
    later = arm.read()
    assert abs(stopped.values["joint_vel"][0]) < 1e-6
    np.testing.assert_array_equal(later.values["joint_pos"], stopped.values["joint_pos"])


def test_arm_never_leaves_its_joint_limits():
    clock = FakeHostClock()
    arm = connected(MockArm, clock)
    arm.command_joint_position(np.array([0.0, -1.57, 5.0, -1.57, -1.57, 0.0]))
    clock.advance(5.0)
    assert arm.read().values["joint_pos"][2] == pytest.approx(math.pi)
    arm.command_joint_velocity(np.array([0.0, 0.0, -3.0, 0.0, 0.0, 0.0]))
    clock.advance(5.0)
    assert arm.read().values["joint_pos"][2] == pytest.approx(-math.pi)


def test_arm_protective_stop_ignores_commands_and_is_reported_until_reset():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, sensor_latency_s=0.0, latency_jitter_s=0.0, reset_noise_rad=0.0)
    arm.command_joint_velocity(np.full(6, 0.3))
    clock.advance(0.2)
    arm.inject_protective_stop()
    halted = arm.read()
    np.testing.assert_array_equal(halted.values["joint_vel"], 0.0)
    arm.command_joint_position(arm.home_q_rad + 0.5)
    clock.advance(1.0)
    np.testing.assert_array_equal(arm.read().values["joint_pos"], halted.values["joint_pos"])
    status = arm.status()
    assert status.protective_stop and not status.ok and "reset()" in status.fault
    arm.reset()
    assert arm.status().ok
    np.testing.assert_allclose(arm.read().values["joint_pos"], arm.home_q_rad, atol=1e-6)
    arm.command_joint_position(arm.home_q_rad + 0.5)
    clock.advance(1.0)
    np.testing.assert_allclose(arm.read().values["joint_pos"], arm.home_q_rad + 0.5, atol=1e-4)


def test_scheduled_protective_stop_fires_relative_to_connect():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, faults={"protective_stop_at_s": 5.0})
    clock.advance(4.9)
    assert arm.status().ok
    clock.advance(0.2)
    assert arm.status().protective_stop


def test_arm_reset_puts_it_near_home_with_seeded_noise():
    clock = FakeHostClock()
    arm = connected(MockArm, clock, reset_noise_rad=0.01, sensor_latency_s=0.0, latency_jitter_s=0.0)
    arm.reset()
    q_rad = arm.read().values["joint_pos"]
    assert np.all(np.abs(q_rad - arm.home_q_rad) < 0.05)
    assert np.any(q_rad != arm.home_q_rad.astype(np.float32))


def test_arm_rejects_a_command_of_the_wrong_shape():
    arm = connected(MockArm, FakeHostClock())
    with pytest.raises(ValueError, match=r"shape \(6,\), got \(5,\)"):
        arm.command_joint_position(np.zeros(5))


def test_reading_before_connect_raises_and_status_is_not_ok():
    arm = MockArm(host_clock=FakeHostClock())
    with pytest.raises(RuntimeError, match="call connect"):
        arm.read()
    assert not arm.status().ok


def test_messages_name_the_device_by_its_current_name():
    arm = MockArm(host_clock=FakeHostClock())
    arm.name = "left_arm"
    with pytest.raises(RuntimeError, match="MockArm 'left_arm' is not connected"):
        arm.read()


def test_reading_tcp_pos_is_forward_kinematics_of_joint_pos():
    clock = FakeHostClock()
    arm = connected(MockArm, clock)
    arm.command_joint_position(np.array([0.4, -1.0, 1.2, -1.0, -1.5, 0.3]))
    clock.advance(0.1)
    reading = arm.read()
    np.testing.assert_allclose(reading.values["tcp_pos"], arm.tcp_position(reading.values["joint_pos"]), atol=1e-6)


# --- UR5 forward kinematics -----------------------------------------------------------------
# Standard DH, T_i = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i). With every joint at zero the links a2, a3
# lie along base x, the d4 and d6 offsets along -y and d5 along -z, hence the first expectation.


def test_fk_all_joints_zero():
    tcp_m = MockArm().tcp_position(np.zeros(6))
    np.testing.assert_allclose(tcp_m, [-0.425 - 0.39225, -(0.10915 + 0.0823), 0.089159 - 0.09465], atol=1e-12)


def test_fk_shoulder_lifted_points_the_arm_straight_up():
    # q2 = -pi/2 turns the upper arm and forearm (a2 + a3 < 0) to point along +z; the wrist frames turn
    # with them, so d5 now runs along -x while d4 and d6 still run along -y.
    tcp_m = MockArm().tcp_position(np.array([0.0, -math.pi / 2, 0.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(tcp_m, [-0.09465, -0.19145, 0.089159 + 0.425 + 0.39225], atol=1e-12)


def test_fk_elbow_bent_hangs_the_forearm_down():
    # q3 = pi/2 turns the forearm (a3 < 0) from -x to -z, and d5 from -z to +x.
    tcp_m = MockArm().tcp_position(np.array([0.0, 0.0, math.pi / 2, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(tcp_m, [-0.425 + 0.09465, -0.19145, 0.089159 - 0.39225], atol=1e-12)


def test_fk_base_joint_rotates_the_tcp_about_z():
    # q1 = pi/2 rotates the zero-pose tcp (x, y, z) to (-y, x, z).
    tcp_m = MockArm().tcp_position(np.array([math.pi / 2, 0.0, 0.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(tcp_m, [0.19145, -0.81725, -0.005491], atol=1e-12)


def test_fk_of_a_non_six_dof_arm_is_a_planar_chain():
    arm = MockArm(dof=2)
    np.testing.assert_allclose(arm.tcp_position(np.zeros(2)), [0.85, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(arm.tcp_position(np.array([math.pi / 2, -math.pi / 2])), [0.425, 0.425, 0.0], atol=1e-12)


# --- quadruped ------------------------------------------------------------------------------


def stand_up(robot: MockLegged, clock: FakeHostClock, kp: float, seconds: float) -> Reading:
    """Command the stand pose at 50 Hz for `seconds`; return the last reading."""
    for _ in range(round(seconds / 0.02)):
        robot.command_motors(robot.stand_q_rad, 0.0, kp, 1.0, 0.0)
        clock.advance(0.02)
        reading = robot.read()
    return reading


def test_legged_stands_up_from_lying_under_pd():
    clock = FakeHostClock()
    robot = connected(MockLegged, clock)
    lying_q_rad = robot.read().values["joint_pos"]
    assert np.max(np.abs(lying_q_rad - robot.stand_q_rad)) > 0.1
    reading = stand_up(robot, clock, kp=40.0, seconds=1.0)
    np.testing.assert_allclose(reading.values["joint_pos"], robot.stand_q_rad, atol=1e-4)
    np.testing.assert_array_equal(reading.values["foot_contact"], 1.0)
    np.testing.assert_allclose(reading.values["imu_rpy"], 0.0, atol=1e-9)
    assert robot.status().ok


def test_legged_joints_track_faster_with_higher_kp():
    errors_rad = []
    for kp in (10.0, 60.0):
        clock = FakeHostClock()
        robot = connected(MockLegged, clock)
        reading = stand_up(robot, clock, kp=kp, seconds=0.06)
        errors_rad.append(np.max(np.abs(reading.values["joint_pos"] - robot.stand_q_rad)))
    assert errors_rad[1] < errors_rad[0]


def test_legged_damping_brings_the_joints_to_rest():
    clock = FakeHostClock()
    robot = connected(MockLegged, clock)
    stand_up(robot, clock, kp=20.0, seconds=0.04)
    robot.damp()
    clock.advance(0.5)
    first = robot.read()
    clock.advance(0.5)
    second = robot.read()
    np.testing.assert_array_equal(first.values["joint_vel"], 0.0)
    np.testing.assert_array_equal(first.values["joint_pos"], second.values["joint_pos"])


def test_legged_left_right_asymmetry_tilts_the_body_until_it_falls():
    clock = FakeHostClock()
    robot = connected(MockLegged, clock)
    lopsided_q_rad = robot.stand_q_rad.copy()
    lopsided_q_rad[[4, 10]] = 2.4  # left thighs (FL, RL) bent far more than the right ones
    robot.command_motors(lopsided_q_rad, 0.0, 40.0, 1.0, 0.0)
    clock.advance(1.0)
    assert 0.0 < robot.read().values["imu_rpy"][0] < 0.8
    assert not robot.status().fallen
    clock.advance(5.0)
    reading = robot.read()
    status = robot.status()
    assert reading.values["imu_rpy"][0] > 0.8
    assert status.fallen and not status.ok and "roll" in status.fault
    np.testing.assert_array_equal(reading.values["foot_contact"], 0.0)


def test_legged_injected_fall_is_reported_until_reset():
    clock = FakeHostClock()
    robot = connected(MockLegged, clock)
    robot.inject_fall()
    assert robot.status().fallen
    robot.reset()
    status = robot.status()
    assert status.ok and not status.fallen
    np.testing.assert_allclose(robot.read().values["joint_pos"], robot.stand_q_rad, atol=0.05)


def test_legged_scheduled_fall_fires_relative_to_connect():
    clock = FakeHostClock()
    robot = connected(MockLegged, clock, faults={"fall_at_s": 2.0})
    clock.advance(1.9)
    assert not robot.status().fallen
    clock.advance(0.2)
    assert robot.status().fallen


def test_legged_tick_is_the_device_time_in_wrapping_milliseconds():
    clock = FakeHostClock()
    robot = connected(MockLegged, clock, clock_offset_s=5_000_000.0)
    clock.advance(0.123)
    reading = robot.read()
    assert reading.values["tick"][0] == (reading.hw_time_ns // 1_000_000) % 2**32


def test_legged_accepts_scalar_gains_and_rejects_negative_ones():
    robot = connected(MockLegged, FakeHostClock())
    robot.command_motors(robot.stand_q_rad, 0.0, 30.0, 0.5, 0.0)
    with pytest.raises(ValueError, match="kp must be >= 0"):
        robot.command_motors(robot.stand_q_rad, 0.0, -1.0, 0.5, 0.0)


# --- camera ---------------------------------------------------------------------------------


def test_camera_frames_follow_its_own_clock_at_its_frame_rate():
    clock = FakeHostClock()
    camera = connected(
        MockCamera, clock, fps=30.0, clock_offset_s=3.0, clock_drift_ppm=1000.0, sensor_latency_s=0.0, latency_jitter_s=0.0
    )
    device_start_ns = camera.clock.to_device_ns(START_NS)
    for _ in range(40):
        clock.advance(0.0123)
        reading = camera.read()
        elapsed_ns = camera.clock.to_device_ns(clock.now_ns) - device_start_ns
        assert reading.frame_number == elapsed_ns * 30 // 1_000_000_000
        assert reading.hw_time_ns == device_start_ns + round(reading.frame_number * 1e9 / 30)


def test_camera_returns_the_same_frame_until_the_next_is_captured():
    clock = FakeHostClock()
    camera = connected(MockCamera, clock, noise_std=5.0)
    clock.advance(0.040)
    first = camera.read()
    clock.advance(0.010)
    again = camera.read()
    assert again.frame_number == first.frame_number and again.hw_time_ns == first.hw_time_ns
    np.testing.assert_array_equal(again.values["image"], first.values["image"])


def test_camera_dropped_frames_leave_a_gap_in_frame_numbers():
    clock = FakeHostClock()
    camera = connected(MockCamera, clock, fps=30.0)
    clock.advance(0.005)  # read mid-frame, clear of the capture instants
    frame_numbers = []
    for step in range(8):
        if step == 3:
            camera.drop_frames(2)  # frame 3 is already captured; 4 and 5 are lost
        frame_numbers.append(camera.read().frame_number)
        clock.advance(1 / 30)
    assert frame_numbers == [0, 1, 2, 3, 3, 3, 6, 7]


def test_camera_scheduled_drop_fires_relative_to_connect():
    clock = FakeHostClock()
    camera = connected(MockCamera, clock, fps=10.0, faults={"drop_at_s": 0.25, "drop_n": 3})
    frame_numbers = []
    for _ in range(10):
        clock.advance(0.1)
        frame_numbers.append(camera.read().frame_number)
    assert sorted(set(frame_numbers)) == [0, 1, 2, 6, 7, 8, 9]


def test_camera_blob_is_drawn_where_the_scene_puts_it():
    clock = FakeHostClock()
    camera = connected(MockCamera, clock, width=64, height=48)
    camera.set_scene(lambda: (0.25, 0.75))
    image = camera.read().values["image"]
    rows, cols = np.nonzero(image[..., 0] == 230)
    assert cols.mean() + 0.5 == pytest.approx(0.25 * 64, abs=0.5)
    assert rows.mean() + 0.5 == pytest.approx(0.75 * 48, abs=0.5)


def test_camera_depth_shows_the_blob_nearer_than_the_background():
    camera = connected(MockCamera, FakeHostClock(), depth=True)
    values = camera.read().values
    blob = values["image"][..., 0] == 230
    assert np.all(values["depth"][blob] < values["depth"][~blob].min())


# --- registry -------------------------------------------------------------------------------


def test_make_builds_a_registered_mock_from_its_name_and_kwargs():
    arm = make("mock_arm", dof=3, seed=7)
    assert isinstance(arm, MockArm) and arm.dof == 3
    assert {"mock_arm", "mock_legged", "mock_camera"} <= set(names())


def test_make_with_an_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError, match="'mock_arn'.*mock_arm, mock_camera, mock_legged"):
        make("mock_arn")


def test_register_refuses_a_name_already_taken():
    with pytest.raises(ValueError, match="'mock_arm' is already registered"):
        register("mock_arm")(MockArm)


def test_register_refuses_a_class_that_is_not_a_device():
    with pytest.raises(TypeError, match="not a Device subclass"):
        register("not_a_device")(dict)


# --- cost -----------------------------------------------------------------------------------


def median_read_s(device, reads: int = 300) -> float:
    """Median wall time of one read() on the real host clock."""
    device.connect()
    durations_s = []
    for _ in range(reads):
        start_s = time.perf_counter()
        device.read()
        durations_s.append(time.perf_counter() - start_s)
    return statistics.median(durations_s)


# Bounds with room for slow or busy machines (a quarter of a 500 Hz period for a state read; 0.06-0.11 ms were
# measured on two different CPUs); the figures themselves are scripts/bench_drivers.py's.
def test_arm_and_legged_reads_take_under_half_a_millisecond():
    assert median_read_s(MockArm()) < 5e-4
    assert median_read_s(MockLegged()) < 5e-4


def test_camera_read_renders_a_64x64_frame_in_under_two_and_a_half_milliseconds():
    # fps far above the read rate, so every read renders a new frame.
    assert median_read_s(MockCamera(fps=1e6, depth=True)) < 2.5e-3

