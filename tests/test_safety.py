"""Specification of the safety layer between the policy and the drivers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robotd.daemon.safety import ActionWatchdog, ArmLimits, ArmSafety, LeggedLimits, LeggedSafety, SafeCommand

PERIOD_S = 0.02
ARM_DOF = 6
LEGS_DOF = 12


def arm_limits(**overrides) -> ArmLimits:
    """Plausible 6-dof arm limits with any field replaced."""
    fields = dict(
        joint_limits_rad=np.tile([-2.0, 2.0], (ARM_DOF, 1)),
        max_joint_vel_rad_s=1.0,  # 0.02 rad per 20 ms step
        max_delta_rad=0.05,
        workspace_min_m=np.array([-0.5, -0.5, 0.0]),
        workspace_max_m=np.array([0.5, 0.5, 0.8]),
    )
    fields.update(overrides)
    return ArmLimits(**fields)


def tcp_from_first_joints(q_rad: np.ndarray) -> np.ndarray:
    """Toy kinematics: the tcp sits at (q0, q1, 0.4) metres."""
    return np.array([q_rad[0], q_rad[1], 0.4])


def arm(**overrides) -> ArmSafety:
    """Arm safety layer over arm_limits(**overrides) and the toy kinematics."""
    return ArmSafety(arm_limits(**overrides), tcp_from_first_joints, PERIOD_S)


def legged_limits(**overrides) -> LeggedLimits:
    """Plausible 12-joint quadruped limits with any field replaced."""
    fields = dict(
        joint_limits_rad=np.tile([-1.0, 1.0], (LEGS_DOF, 1)),
        action_scale_rad=0.5,
        max_delta_rad=0.1,
        kp_max=40.0,
        kd_max=2.0,
        tau_max_nm=30.0,
        kp=20.0,
        kd=0.5,
        max_tilt_rad=0.8,
    )
    fields.update(overrides)
    return LeggedLimits(**fields)


STAND_Q_RAD = np.zeros(LEGS_DOF)
UPRIGHT_RPY = np.zeros(3)


def legs(**overrides) -> LeggedSafety:
    """Legged safety layer over legged_limits(**overrides), standing at all zeros."""
    return LeggedSafety(legged_limits(**overrides), STAND_Q_RAD, PERIOD_S)


# --- arm ---------------------------------------------------------------------------------------


def test_arm_small_action_moves_from_the_last_target_unclipped():
    command = arm(max_joint_vel_rad_s=10.0).command(np.full(ARM_DOF, 0.5), np.zeros(ARM_DOF), np.full(ARM_DOF, 0.1))
    assert command.kind == "joint_position"
    np.testing.assert_allclose(command.values["q_rad"], np.full(ARM_DOF, 0.125))
    assert not command.clipped and command.reasons == ()


def test_arm_without_a_last_target_moves_from_the_measured_position():
    q_now = np.linspace(-0.1, 0.1, ARM_DOF)
    command = arm(max_joint_vel_rad_s=10.0).command(np.ones(ARM_DOF), q_now, None)
    np.testing.assert_allclose(command.values["q_rad"], q_now + 0.05)


def test_arm_actions_beyond_unit_range_are_clipped_and_reported():
    command = arm(max_joint_vel_rad_s=10.0).command(np.full(ARM_DOF, 3.0), np.zeros(ARM_DOF), None)
    np.testing.assert_allclose(command.values["q_rad"], np.full(ARM_DOF, 0.05))
    assert command.clipped and command.reasons == ("action_range",)


def test_arm_joint_speed_limits_the_step_below_the_action_delta():
    command = arm(max_joint_vel_rad_s=1.0).command(np.ones(ARM_DOF), np.zeros(ARM_DOF), None)
    np.testing.assert_allclose(command.values["q_rad"], np.full(ARM_DOF, 0.02))
    assert command.reasons == ("joint_velocity",)


def test_arm_per_joint_speed_limits_apply_per_joint():
    speeds = np.array([0.5, 1.0, 10.0, 10.0, 10.0, 10.0])
    command = arm(max_joint_vel_rad_s=speeds).command(np.ones(ARM_DOF), np.zeros(ARM_DOF), None)
    np.testing.assert_allclose(command.values["q_rad"], [0.01, 0.02, 0.05, 0.05, 0.05, 0.05])


def test_arm_targets_are_clipped_to_joint_limits():
    last_target = np.array([0.0, 0.0, 1.99, 0.0, 0.0, 0.0])
    command = arm().command(np.ones(ARM_DOF), np.zeros(ARM_DOF), last_target)
    assert command.values["q_rad"][2] == 2.0
    assert command.reasons == ("joint_velocity", "joint_limit")


def test_arm_leaving_the_workspace_box_holds_the_last_target():
    last_target = np.array([0.49, 0.0, 0.0, 0.0, 0.0, 0.0])  # tcp x = 0.49 m, box ends at 0.5 m
    command = arm().command(np.ones(ARM_DOF), last_target, last_target)
    assert command.kind == "hold"
    np.testing.assert_array_equal(command.values["q_rad"], last_target)
    assert command.clipped and command.reasons == ("joint_velocity", "workspace")


def test_arm_inside_the_workspace_box_is_allowed_to_approach_its_edge():
    last_target = np.array([0.47, 0.0, 0.0, 0.0, 0.0, 0.0])
    command = arm().command(np.ones(ARM_DOF), last_target, last_target)
    assert command.kind == "joint_position"
    assert command.values["q_rad"][0] == pytest.approx(0.49)


def test_arm_broken_kinematics_holds_instead_of_raising():
    def broken(q_rad):
        """Kinematics that always fail."""
        raise ZeroDivisionError("singular")

    command = ArmSafety(arm_limits(), broken, PERIOD_S).command(np.zeros(ARM_DOF), np.zeros(ARM_DOF), None)
    assert command.kind == "hold" and command.reasons == ("kinematics_error",)


@pytest.mark.parametrize(
    "action",
    [
        np.full(ARM_DOF, np.nan),
        np.array([0.0, 0.0, np.inf, 0.0, 0.0, 0.0]),
        np.zeros(ARM_DOF + 1),
        np.zeros((2, ARM_DOF)),
        None,
        "forward",
        [0.1, "x", 0, 0, 0, 0],
    ],
    ids=["nan", "inf", "too_long", "2d", "none", "string", "mixed"],
)
def test_arm_invalid_actions_hold_the_last_target(action):
    last_target = np.full(ARM_DOF, 0.3)
    command = arm().command(action, np.zeros(ARM_DOF), last_target)
    assert command.kind == "hold"
    np.testing.assert_array_equal(command.values["q_rad"], last_target)
    assert command.reasons == ("invalid_action",)


def test_arm_with_no_usable_position_at_all_stops():
    command = arm().command(np.zeros(ARM_DOF), np.full(ARM_DOF, np.nan), None)
    assert command.kind == "stop" and "invalid_state" in command.reasons


def test_arm_command_does_not_alias_the_callers_arrays():
    last_target = np.full(ARM_DOF, 0.3)
    command = arm().command(np.full(ARM_DOF, np.nan), np.zeros(ARM_DOF), last_target)
    command.values["q_rad"][:] = 9.0
    assert np.all(last_target == 0.3)


def test_arm_fallback_hold_keeps_the_last_target_and_stop_stops():
    last_target = np.full(ARM_DOF, 0.3)
    hold = arm().fallback("hold", np.zeros(ARM_DOF), last_target)
    assert hold.kind == "hold" and hold.reasons == ("fallback",)
    np.testing.assert_array_equal(hold.values["q_rad"], last_target)
    assert arm().fallback("stop", np.zeros(ARM_DOF), last_target) == SafeCommand("stop", {}, False, ("fallback",))


def test_arm_fallback_hold_without_a_target_holds_the_measured_position():
    q_now = np.full(ARM_DOF, -0.2)
    np.testing.assert_array_equal(arm().fallback("hold", q_now, None).values["q_rad"], q_now)


def test_arm_fallback_rejects_unknown_modes_by_name():
    with pytest.raises(ValueError, match="'freeze'.*'hold' or 'stop'"):
        arm().fallback("freeze", np.zeros(ARM_DOF), None)


# --- legged ------------------------------------------------------------------------------------


def test_legged_action_sets_pd_targets_around_the_stand_pose():
    command = legs().command(np.full(LEGS_DOF, 0.1), STAND_Q_RAD, STAND_Q_RAD, UPRIGHT_RPY)
    assert command.kind == "motors"
    assert set(command.values) == {"q_rad", "dq_rad_s", "kp", "kd", "tau_nm"}
    np.testing.assert_allclose(command.values["q_rad"], np.full(LEGS_DOF, 0.05))
    np.testing.assert_array_equal(command.values["kp"], np.full(LEGS_DOF, 20.0))
    np.testing.assert_array_equal(command.values["tau_nm"], np.zeros(LEGS_DOF))
    assert command.reasons == ()


def test_legged_target_changes_at_most_max_delta_per_step():
    command = legs().command(np.ones(LEGS_DOF), STAND_Q_RAD, STAND_Q_RAD, UPRIGHT_RPY)
    np.testing.assert_allclose(command.values["q_rad"], np.full(LEGS_DOF, 0.1))
    assert command.reasons == ("step_delta",)


def test_legged_targets_are_clipped_to_joint_limits():
    limits = np.tile([-1.0, 1.0], (LEGS_DOF, 1))
    limits[0] = [-0.2, 0.2]
    safety = LeggedSafety(legged_limits(joint_limits_rad=limits), STAND_Q_RAD, PERIOD_S)
    last_target = np.full(LEGS_DOF, 0.15)
    command = safety.command(np.ones(LEGS_DOF), last_target, last_target, UPRIGHT_RPY)
    assert command.values["q_rad"][0] == 0.2
    assert "joint_limit" in command.reasons


def test_legged_gains_above_their_maxima_are_clipped_and_reported():
    command = legs(kp=100.0, kd=5.0).command(np.zeros(LEGS_DOF), STAND_Q_RAD, None, UPRIGHT_RPY)
    np.testing.assert_array_equal(command.values["kp"], np.full(LEGS_DOF, 40.0))
    np.testing.assert_array_equal(command.values["kd"], np.full(LEGS_DOF, 2.0))
    assert command.clipped and command.reasons == ("gain_limit",)


def test_legged_pd_torque_bound_pulls_far_targets_toward_the_measured_position():
    safety = legs(kp=40.0, tau_max_nm=2.0, max_delta_rad=1.0)  # torque reach 0.05 rad
    command = safety.command(np.ones(LEGS_DOF), STAND_Q_RAD, None, UPRIGHT_RPY)
    np.testing.assert_allclose(command.values["q_rad"], np.full(LEGS_DOF, 0.05))
    assert command.reasons == ("torque",)


@pytest.mark.parametrize("rpy", [[0.9, 0.0, 0.0], [0.0, -0.81, 0.0], [np.nan, 0.0, 0.0]])
def test_legged_tilt_beyond_the_limit_or_unknown_attitude_damps(rpy):
    q_now = np.full(LEGS_DOF, 0.3)
    command = legs().command(np.zeros(LEGS_DOF), q_now, STAND_Q_RAD, np.array(rpy))
    assert command.kind == "damp"
    np.testing.assert_array_equal(command.values["kp"], np.zeros(LEGS_DOF))
    np.testing.assert_array_equal(command.values["kd"], np.full(LEGS_DOF, 0.5))
    assert command.reasons == (("invalid_state",) if np.isnan(rpy[0]) else ("fall",))


def test_legged_yaw_is_not_a_fall():
    command = legs().command(np.zeros(LEGS_DOF), STAND_Q_RAD, None, np.array([0.0, 0.0, 3.0]))
    assert command.kind == "motors"


def test_legged_invalid_action_holds_the_last_target_with_position_gains():
    last_target = np.full(LEGS_DOF, 0.2)
    command = legs().command(np.full(LEGS_DOF, np.inf), STAND_Q_RAD, last_target, UPRIGHT_RPY)
    assert command.kind == "hold" and command.reasons == ("invalid_action",)
    np.testing.assert_array_equal(command.values["q_rad"], last_target)
    np.testing.assert_array_equal(command.values["kp"], np.full(LEGS_DOF, 20.0))


def test_legged_fallbacks_hold_or_damp():
    last_target = np.full(LEGS_DOF, 0.2)
    hold = legs().fallback("hold", STAND_Q_RAD, last_target)
    assert hold.kind == "hold" and not hold.clipped
    np.testing.assert_array_equal(hold.values["q_rad"], last_target)
    for mode in ("damp", "stop"):  # a quadruped has no brake: stopping means damping down
        damp = legs().fallback(mode, STAND_Q_RAD, last_target)
        assert damp.kind == "damp" and damp.reasons == ("fallback",)
        np.testing.assert_array_equal(damp.values["kp"], np.zeros(LEGS_DOF))


def test_legged_stand_pose_must_lie_within_joint_limits():
    with pytest.raises(ValueError, match=r"stand_q_rad\[3\]=1.5 is outside joint limits"):
        LeggedSafety(legged_limits(), np.where(np.arange(LEGS_DOF) == 3, 1.5, 0.0), PERIOD_S)


# --- limits validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"joint_limits_rad": np.tile([1.0, -1.0], (ARM_DOF, 1))}, r"joint_limits_rad\[0\] = \[1.0, -1.0\]: lower bound must be below upper"),
        ({"joint_limits_rad": np.zeros((ARM_DOF, 3))}, r"joint_limits_rad has shape \(6, 3\); expected \(None, 2\)"),
        ({"joint_limits_rad": [[0.0, np.nan]]}, "joint_limits_rad=.*NaN or inf"),
        ({"max_joint_vel_rad_s": 0.0}, r"max_joint_vel_rad_s=0.0 must be a finite number > 0"),
        ({"max_joint_vel_rad_s": np.ones(ARM_DOF - 1)}, r"max_joint_vel_rad_s has shape \(5,\); expected \(6,\)"),
        ({"max_joint_vel_rad_s": -np.ones(ARM_DOF)}, r"max_joint_vel_rad_s=.* must be > 0 for every joint"),
        ({"max_delta_rad": -0.1}, r"max_delta_rad=-0.1 must be a finite number > 0"),
        ({"workspace_min_m": np.zeros(2)}, r"workspace_min_m has shape \(2,\); expected \(3,\)"),
        ({"workspace_max_m": np.array([0.5, -0.6, 0.8])}, r"workspace_min_m/workspace_max_m\[1\] = \[-0.5, -0.6\]"),
    ],
)
def test_arm_limits_reject_bad_values_naming_field_value_and_fix(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        arm_limits(**overrides)
    assert str(error.value).startswith("ArmLimits.") and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kp_max": 0.0}, "kp_max=0.0 must be a finite number > 0"),
        ({"kd": -1.0}, "kd=-1.0 must be a finite number >= 0"),
        ({"tau_max_nm": float("inf")}, "tau_max_nm=inf must be a finite number > 0"),
        ({"max_tilt_rad": 4.0}, "max_tilt_rad=4.0 exceeds pi"),
        ({"action_scale_rad": "big"}, "action_scale_rad='big' is not a number"),
    ],
)
def test_legged_limits_reject_bad_values_naming_field_value_and_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        legged_limits(**overrides)


def test_period_must_be_positive():
    with pytest.raises(ValueError, match="period_s=0"):
        ArmSafety(arm_limits(), tcp_from_first_joints, 0)


# --- properties: whatever the action, outputs stay inside joint limits and step bounds --------

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
EPS = 1e-12


def joints_inside(lower: float, upper: float, dof: int):
    """Strategy for joint vectors with every entry in [lower, upper]."""
    return st.lists(st.floats(lower, upper), min_size=dof, max_size=dof).map(np.array)


@settings(max_examples=200, deadline=None)
@given(
    action=st.lists(any_float, min_size=ARM_DOF, max_size=ARM_DOF).map(np.array),
    q_now=joints_inside(-2.0, 2.0, ARM_DOF),
    last_target=st.none() | joints_inside(-2.0, 2.0, ARM_DOF),
)
def test_arm_output_never_leaves_joint_limits_or_exceeds_the_step(action, q_now, last_target):
    safety = ArmSafety(arm_limits(), lambda q_rad: np.zeros(3) + 0.1, PERIOD_S)
    command = safety.command(action, q_now, last_target)
    base = q_now if last_target is None else last_target
    q_rad = command.values["q_rad"]
    assert command.kind in ("joint_position", "hold")
    assert np.all(np.isfinite(q_rad))
    assert np.all(q_rad >= -2.0) and np.all(q_rad <= 2.0)
    assert np.all(np.abs(q_rad - base) <= safety.max_step_rad + EPS)


@settings(max_examples=200, deadline=None)
@given(
    action=st.lists(any_float, min_size=LEGS_DOF, max_size=LEGS_DOF).map(np.array),
    q_now=joints_inside(-1.0, 1.0, LEGS_DOF),
    last_target=st.none() | joints_inside(-1.0, 1.0, LEGS_DOF),
    rpy=st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3).map(np.array),
)
def test_legged_output_never_leaves_joint_limits_or_exceeds_the_step(action, q_now, last_target, rpy):
    command = legs().command(action, q_now, last_target, rpy)
    base = q_now if last_target is None else last_target
    q_rad = command.values["q_rad"]
    assert np.all(np.isfinite(q_rad))
    assert np.all(q_rad >= -1.0) and np.all(q_rad <= 1.0)
    assert np.all(command.values["kp"] <= 40.0) and np.all(command.values["kd"] <= 2.0)
    if command.kind != "damp":
        assert np.all(np.abs(q_rad - base) <= 0.1 + EPS)


@settings(max_examples=100, deadline=None)
@given(
    action=st.lists(st.floats(-1.0, 1.0), min_size=ARM_DOF, max_size=ARM_DOF).map(np.array),
    outside_by=st.floats(0.01, 3.0),
)
def test_arm_starting_outside_joint_limits_walks_back_without_jumping(action, outside_by):
    safety = ArmSafety(arm_limits(), lambda q_rad: np.zeros(3) + 0.1, PERIOD_S)
    last_target = np.full(ARM_DOF, 2.0 + outside_by)
    q_rad = safety.command(action, last_target, last_target).values["q_rad"]
    assert np.all(np.abs(q_rad - last_target) <= safety.max_step_rad + EPS)
    assert np.all(q_rad < last_target)


# --- watchdog ----------------------------------------------------------------------------------


def test_watchdog_expires_after_timeout_of_silence_and_feeding_resets_it():
    now = {"ns": 0}
    watchdog = ActionWatchdog(0.1, now_ns=lambda: now["ns"])
    now["ns"] = 100_000_000
    assert not watchdog.expired()
    now["ns"] = 100_000_001
    assert watchdog.expired()
    assert watchdog.silent_for_s() == pytest.approx(0.1)
    watchdog.feed()
    assert not watchdog.expired() and watchdog.silent_for_s() == 0.0


def test_watchdog_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s=0"):
        ActionWatchdog(0)


# --- legged action filter ----------------------------------------------------------------------


def test_legged_action_filter_blends_the_new_target_with_the_last_one():
    last = np.full(LEGS_DOF, 0.04)
    command = legs(action_filter=0.25).command(np.full(LEGS_DOF, 0.16), STAND_Q_RAD, last, UPRIGHT_RPY)
    # desired 0.08 (0.16 * 0.5) weighted 0.25 against the last target 0.04 weighted 0.75
    np.testing.assert_allclose(command.values["q_rad"], np.full(LEGS_DOF, 0.25 * 0.08 + 0.75 * 0.04))
    assert command.kind == "motors" and not command.clipped and command.reasons == ()


def test_legged_action_filter_converges_geometrically_to_a_held_action():
    safety = legs(action_filter=0.5, max_delta_rad=1.0)
    target = STAND_Q_RAD.copy()
    for _ in range(3):
        target = safety.command(np.full(LEGS_DOF, 0.8), target, target, UPRIGHT_RPY).values["q_rad"]
    # 0.4 * (1 - 0.5 ** 3) after three steps from the stand pose
    np.testing.assert_allclose(target, np.full(LEGS_DOF, 0.4 * 0.875))


def test_legged_action_filter_of_one_leaves_targets_unfiltered():
    last = np.full(LEGS_DOF, 0.04)
    command = legs(action_filter=1.0).command(np.full(LEGS_DOF, 0.16), STAND_Q_RAD, last, UPRIGHT_RPY)
    np.testing.assert_allclose(command.values["q_rad"], np.full(LEGS_DOF, 0.08))


def test_legged_action_filter_applies_before_the_step_bound():
    # Unfiltered the step would be 0.5 (clipped to 0.1); filtered at 0.1 it is 0.05 and passes unclipped.
    command = legs(action_filter=0.1).command(np.ones(LEGS_DOF), STAND_Q_RAD, STAND_Q_RAD, UPRIGHT_RPY)
    np.testing.assert_allclose(command.values["q_rad"], np.full(LEGS_DOF, 0.05))
    assert command.reasons == ()
    # A large jump still meets the step bound after filtering.
    command = legs(action_filter=0.5).command(np.ones(LEGS_DOF), STAND_Q_RAD, STAND_Q_RAD, UPRIGHT_RPY)
    np.testing.assert_allclose(command.values["q_rad"], np.full(LEGS_DOF, 0.1))
    assert command.reasons == ("step_delta",)


def test_legged_action_filter_does_not_slow_damping_on_a_fall():
    command = legs(action_filter=0.1).command(np.ones(LEGS_DOF), STAND_Q_RAD, STAND_Q_RAD, np.array([1.0, 0.0, 0.0]))
    assert command.kind == "damp" and command.reasons == ("fall",)


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan")])
def test_legged_action_filter_outside_zero_one_is_rejected_naming_it(value):
    with pytest.raises(ValueError, match="action_filter"):
        legged_limits(action_filter=value)


def test_legged_max_tilt_of_pi_never_damps_even_upside_down():
    command = legs(max_tilt_rad=np.pi).command(np.zeros(LEGS_DOF), STAND_Q_RAD, STAND_Q_RAD, np.array([3.0, 1.5, 0.0]))
    assert command.kind == "motors"
