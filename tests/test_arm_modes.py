"""Arm action modes: joint deltas or tool-centre-point deltas, each with an optional gripper value,
through the safety layer and RobotIO, the same path the daemon and the Gymnasium environments take."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.sim.mock import MockArm
from robotd import config as config_module
from robotd.daemon.robot_io import RobotIO
from robotd.daemon.safety import ArmLimits, ArmSafety, TcpLimits, TcpSafety

PERIOD_S = 0.04


def limits(**overrides) -> ArmLimits:
    fields = dict(joint_limits_rad=np.tile([-6.0, 6.0], (6, 1)), max_joint_vel_rad_s=1.0, max_delta_rad=0.05,
                  workspace_min_m=np.array([-0.8, -0.5, 0.05]), workspace_max_m=np.array([0.8, 0.5, 0.9]))
    fields.update(overrides)
    return ArmLimits(**fields)


def toy_tcp(q_rad: np.ndarray) -> np.ndarray:
    """The tool sits at (q0, q1, q2) metres."""
    return np.array(q_rad[:3], dtype=np.float64)


def tcp_safety(*, gripper: bool = False, delta: float = 0.02, speed: float = 0.25) -> TcpSafety:
    return TcpSafety(limits(), TcpLimits(max_tcp_delta_m=delta, max_tcp_speed_m_s=speed), toy_tcp, PERIOD_S,
                     gripper=gripper)


def test_tcp_action_becomes_a_velocity_that_moves_the_tool_by_the_delta_in_one_period():
    safety = tcp_safety(speed=1.0)
    q = np.array([0.1, 0.0, 0.4, 0.0, 0.0, 0.0])
    command = safety.command(np.array([1.0, -0.5, 0.0]), q)
    assert command.kind == "tcp_velocity" and not command.clipped
    twist = command.values["tcp_velocity"]
    np.testing.assert_allclose(twist[:3] * PERIOD_S, [0.02, -0.01, 0.0], atol=1e-12)
    np.testing.assert_array_equal(twist[3:], np.zeros(3))       # the tool keeps its orientation
    np.testing.assert_allclose(safety.normalised(command), [1.0, -0.5, 0.0], atol=1e-12)


def test_tcp_target_is_pulled_back_inside_the_workspace_box():
    safety = tcp_safety(speed=1.0)
    q = np.array([0.79, 0.0, 0.06, 0.0, 0.0, 0.0])          # 1 cm from the +x wall and the floor
    command = safety.command(np.array([1.0, 0.0, -1.0]), q)
    assert command.clipped and "workspace" in command.reasons
    np.testing.assert_allclose(command.values["tcp_velocity"][:3] * PERIOD_S, [0.01, 0.0, -0.01], atol=1e-12)


def test_tcp_outside_the_box_is_steered_back_in():
    safety = tcp_safety()
    q = np.array([0.85, 0.0, 0.4, 0.0, 0.0, 0.0])           # 5 cm outside in +x
    command = safety.command(np.array([1.0, 0.0, 0.0]), q)
    assert command.values["tcp_velocity"][0] < 0.0          # the move goes back toward the box, not further out


def test_tcp_speed_is_capped():
    safety = tcp_safety(delta=0.05, speed=0.5)               # 0.05 m per 40 ms would be 1.25 m/s per axis
    command = safety.command(np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 0.4, 0, 0, 0]))
    assert "tcp_speed" in command.reasons
    assert np.linalg.norm(command.values["tcp_velocity"][:3]) == pytest.approx(0.5)


def test_tcp_mode_malformed_input_holds_or_stops():
    safety = tcp_safety()
    q = np.zeros(6)
    held = safety.command(np.array([np.nan, 0.0, 0.0]), q)
    assert held.kind == "hold" and "invalid_action" in held.reasons
    np.testing.assert_array_equal(held.values["tcp_velocity"], np.zeros(6))
    assert safety.command(np.zeros(3), np.full(6, np.nan)).kind == "stop"
    assert safety.command(np.zeros(4), q).kind == "hold"        # wrong size without a gripper
    assert safety.fallback("hold").values["tcp_velocity"].tolist() == [0.0] * 6
    assert safety.fallback("stop").kind == "stop"
    with pytest.raises(ValueError, match="fallback mode='coast'"):
        safety.fallback("coast")


def test_gripper_value_maps_minus_one_open_to_plus_one_closed_in_both_modes():
    q = np.array([0.1, 0.0, 0.4, 0.0, 0.0, 0.0])
    for safety, dims in ((tcp_safety(gripper=True), 3), (ArmSafety(limits(), toy_tcp, PERIOD_S, gripper=True), 6)):
        closed = safety.command(np.r_[np.zeros(dims), 1.0], q, None)
        opened = safety.command(np.r_[np.zeros(dims), -1.0], q, None)
        half = safety.command(np.r_[np.zeros(dims), 0.0], q, None)
        assert closed.values["gripper"].tolist() == [1.0]
        assert opened.values["gripper"].tolist() == [0.0]
        assert half.values["gripper"].tolist() == [0.5]
        assert safety.normalised(closed, q)[-1] == 1.0
        # A fallback carries no gripper value: the gripper keeps what it had, and the record says so.
        assert safety.normalised(safety.fallback("hold", q, None), q)[-1] == 1.0


def test_joint_mode_with_gripper_needs_the_extra_value():
    safety = ArmSafety(limits(), toy_tcp, PERIOD_S, gripper=True)
    q = np.array([0.1, 0.0, 0.4, 0.0, 0.0, 0.0])
    assert safety.command(np.zeros(6), q, None).kind == "hold"       # 6 values for 7 expected
    command = safety.command(np.r_[np.full(6, 0.5), 1.0], q, None)
    assert command.kind == "joint_position"
    np.testing.assert_allclose(command.values["q_rad"] - q, 0.025)    # 0.5 x max_delta_rad 0.05, under the speed cap
    assert command.values["gripper"].tolist() == [1.0]


def test_mock_arm_tcp_velocity_moves_the_tool_along_the_command():
    now = [0]
    arm = MockArm(host_clock=lambda: now[0], reset_noise_rad=0.0)
    arm.connect()
    start = arm.tcp_position(np.asarray(arm.read().values["joint_pos"], np.float64))
    arm.command_tcp_velocity(np.array([0.0, 0.05, 0.0, 0.0, 0.0, 0.0]))
    for _ in range(25):                                               # 0.5 s in 20 ms commands
        now[0] += 20_000_000
        q = np.asarray(arm.read().values["joint_pos"], np.float64)
        arm.command_tcp_velocity(np.array([0.0, 0.05, 0.0, 0.0, 0.0, 0.0]))
    moved = arm.tcp_position(q) - start
    assert 0.015 < moved[1] < 0.03                                    # about 0.05 m/s x 0.5 s, less the lag
    assert abs(moved[0]) < 0.003 and abs(moved[2]) < 0.003
    with pytest.raises(ValueError, match="command_tcp_velocity v"):
        arm.command_tcp_velocity(np.zeros(3))


def make_io(**safety_arm) -> RobotIO:
    data = {"robot": {"name": "arm", "driver": "mock_arm", "args": {"reset_noise_rad": 0.0}},
            "control": {"rate_hz": 25, "action_deadline_ms": 20},
            "safety": {"arm": {"workspace_min_m": [-1.0, -1.0, -0.3], "workspace_max_m": [1.0, 1.0, 1.2],
                               **safety_arm}}}
    now = [1_000_000_000]
    io = RobotIO(config_module.from_dict(data), host_clock=lambda: now[0])
    io.now = now
    return io


def test_robot_io_tcp_mode_has_three_action_values_and_moves_the_tool():
    io = make_io(action_mode="tcp_delta", max_tcp_delta_m=0.01, max_tcp_speed_m_s=0.5)
    assert io.action_dim == 3
    io.connect()
    try:
        arrays, _ = io.read_all(io.now[0])
        start = arrays["arm/tcp_pos"].copy()
        for _ in range(40):
            io.act(np.array([0.0, 0.0, 1.0]), arrays)
            io.now[0] += 40_000_000
            arrays, _ = io.read_all(io.now[0])
        assert arrays["arm/tcp_pos"][2] - start[2] > 0.2           # 40 steps of up to 1 cm, less the servo lag
        np.testing.assert_allclose(io.prev_action, [0.0, 0.0, 1.0], atol=1e-6)
    finally:
        io.disconnect()


def test_robot_io_refuses_a_gripper_the_driver_does_not_have():
    with pytest.raises(ValueError, match="safety.arm.gripper = true but robot driver 'mock_arm' has no gripper"):
        make_io(gripper=True)


def test_config_rejects_an_unknown_arm_action_mode():
    with pytest.raises(config_module.ConfigError, match="safety.arm.action_mode"):
        config_module.from_dict({"safety": {"arm": {"action_mode": "cartesian"}}})


def test_the_record_keeps_the_policys_own_action_where_the_safety_layer_limits_it():
    # A tool pushed against the workspace wall: the command is limited, the record keeps what the policy
    # asked for (so the world model learns that pushing into the wall does nothing), and applied_action
    # shows what reached the robot.
    io = make_io(action_mode="tcp_delta", max_tcp_delta_m=0.01, max_tcp_speed_m_s=0.5,
                 workspace_max_m=[1.0, 1.0, 0.0])
    io.connect()
    try:
        arrays, _ = io.read_all(io.now[0])
        assert arrays["arm/tcp_pos"][2] > 0.0                          # home is above the box's ceiling
        command = io.act(np.array([0.3, 2.0, 1.0]), arrays)
        assert command.clipped and "workspace" in command.reasons
        np.testing.assert_allclose(io.prev_action, [0.3, 1.0, 1.0])   # the policy's own, clipped to [-1, 1]
        assert io.applied_action[2] < 0.0                              # the tool is sent back down into the box
        io.act(np.array([np.nan, 0.0, 0.0]), arrays)                   # malformed: the fallback is the record
        np.testing.assert_array_equal(io.prev_action, io.applied_action)
        io.act(None, arrays)                                           # late: the fallback again
        np.testing.assert_array_equal(io.prev_action, np.zeros(3))
    finally:
        io.disconnect()
