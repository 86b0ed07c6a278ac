"""Robot kinds: chosen once from the driver's base class, each driving its robot through its own commands."""
from unittest import mock

import numpy as np
import pytest

from drivers.base import Legged
from drivers.mock import MockArm, MockCamera, MockLegged
from robotd import config as cfg
from robotd.robot_kinds import UNCHANGED, ArmKind, LeggedKind, kind_of
from robotd.safety import SafeCommand


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
    assert kind.apply(SafeCommand("damp", {}, False, ())) is UNCHANGED
    q = np.zeros(12)
    target = kind.apply(SafeCommand("motors", {"q_rad": q}, False, ()))
    np.testing.assert_array_equal(target, q)
    assert robot.command_motors.call_count == 1


def test_only_a_drawing_camera_takes_a_scene_and_every_device_takes_a_control_period():
    drawing = MockCamera()
    assert drawing.draws_scene
    drawing.set_scene(lambda: (0.5, 0.5))
    MockArm().set_control_period(0.04)                # the base class: nothing to do for a mock
    from drivers.sim_ur5 import SimCamera
    assert not SimCamera.draws_scene
    assert ArmKind(MockArm(), cfg.load(None), 0.04).links_scene([drawing])
    assert not ArmKind(MockArm(), cfg.load(None), 0.04).links_scene([])
