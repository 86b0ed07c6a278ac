"""Robot kinds: chosen once from the driver's base class, each driving its robot through its own commands."""
from unittest import mock

import numpy as np
import pytest

from drivers.base import Legged
from drivers.sim.mock import MockArm, MockCamera, MockLegged
from robotd import config as cfg
from robotd.daemon.robot_kinds import UNCHANGED, ArmKind, LeggedKind, kind_of
from robotd.daemon.safety import SafeCommand


def test_the_kind_follows_the_drivers_base_class():
    arm_config = cfg.load(None)
    arm = kind_of(MockArm(), arm_config, 0.04)
    assert isinstance(arm, ArmKind) and arm.name == "arm" and arm.action_dim == 6
    legged = kind_of(MockLegged(), cfg.load(None, ["robot.driver=mock_legged"]), 0.05)
    assert isinstance(legged, LeggedKind) and legged.action_dim == 12
    with pytest.raises(ValueError, match="neither an arm, a legged robot nor a simulated environment") as info:
        kind_of(MockCamera(), arm_config, 0.04)
    assert "\n" not in str(info.value)


def test_a_gripper_the_arm_does_not_have_is_refused_in_one_line():
    with pytest.raises(ValueError, match="safety.arm.gripper = true but robot driver 'mock_arm' has no gripper"):
        kind_of(MockArm(), cfg.load(None, ["safety.arm.gripper=true"]), 0.04)


def test_a_legged_robot_damps_on_a_fall_and_keeps_its_target_then():
    robot = mock.create_autospec(Legged, instance=True)
    robot.n_motors, robot.name = 12, "legs"
    kind = LeggedKind(robot, cfg.load(None, ["robot.driver=mock_legged"]), 0.05)
    kind.stop("fall")
    robot.damp.assert_called_once()
    kind.stop("watchdog")
    robot.stop.assert_called_once()
    q, zeros = np.zeros(12), np.zeros(12)
    pd = {"q_rad": q, "dq_rad_s": zeros, "kp": np.full(12, 60.0), "kd": np.full(12, 2.0), "tau_nm": zeros}
    assert kind.apply(SafeCommand("damp", {**pd, "kp": zeros}, False, ())) is UNCHANGED
    target = kind.apply(SafeCommand("motors", pd, False, ()))
    np.testing.assert_array_equal(target, q)
    assert robot.command_motors.call_count == 1 and robot.command_motors.call_args.args[2][0] == 60.0


@pytest.mark.parametrize("kind, values, expected", [
    ("teleport", {}, "kind 'teleport' is unknown"),
    ("joint_position", {}, "must hold \\['q_rad'\\]"),
    ("joint_position", {"q_rad": np.zeros(6), "action": np.zeros(6)}, "may hold \\['gripper'\\]"),
    ("hold", {"q_rad": np.zeros(12), "kp": np.zeros(12)}, "part of a PD command"),
    ("action", {"action": [0.0]}, "action is a list, not a numpy array"),
])
def test_a_safe_command_holds_what_its_kind_allows(kind, values, expected):
    with pytest.raises(ValueError, match=expected):
        SafeCommand(kind, values, False, ())


def test_a_safe_commands_fields_read_by_name():
    command = SafeCommand("joint_position", {"q_rad": np.ones(6), "gripper": np.array([0.5])}, True, ("workspace",))
    assert command.q_rad[0] == 1.0 and command.gripper[0] == 0.5
    assert command.tcp_velocity is None and command.action is None and command.pd is None


def test_only_a_drawing_camera_takes_a_scene_and_every_device_takes_a_control_period():
    drawing = MockCamera()
    assert drawing.draws_scene
    drawing.set_scene(lambda: (0.5, 0.5))
    MockArm().set_control_period(0.04)                # the base class: nothing to do for a mock
    from drivers.sim.sim_ur5 import SimCamera
    assert not SimCamera.draws_scene
    assert ArmKind(MockArm(), cfg.load(None), 0.04).links_scene([drawing])
    assert not ArmKind(MockArm(), cfg.load(None), 0.04).links_scene([])
