"""Leg odometry for the Unitree A1: the trunk's velocity from the joints, the gyroscope and foot contacts.

A real A1 has no velocity sensor, and a walking reward needs the forward speed. A foot that is on
the ground does not move, so the trunk moves opposite to that foot's motion relative to the trunk:
``v_trunk = -(J(q) dq + omega x p_foot)`` in the trunk frame, averaged over the feet in contact,
then turned into the heading frame (roll and pitch undone, yaw kept: x forward, y left, z up), the
frame the simulated A1's ``scene_base_vel`` uses. Feet that slip make the estimate read low.

Leg geometry (hip offsets, hip-to-thigh offset, thigh and calf lengths) is the A1's, as in
drivers/sim/models/a1.xml. Legs are in the A1's motor order: FR, FL, RR, RL; per leg hip (about x),
thigh and calf (about y).
"""
from __future__ import annotations

import math

import numpy as np

HIP_OFFSETS_M = np.array([[0.183, -0.047, 0.0], [0.183, 0.047, 0.0], [-0.183, -0.047, 0.0], [-0.183, 0.047, 0.0]])
# Sideways offset of the thigh from the hip joint: right legs (FR, RR) -y, left legs +y.
THIGH_OFFSET_M = 0.0838
LEG_SIDE = (-1.0, 1.0, -1.0, 1.0)
THIGH_M = 0.2
CALF_M = 0.2


def foot_position(leg: int, q_leg) -> np.ndarray:
    """The foot centre of ``leg`` (0 FR, 1 FL, 2 RR, 3 RL) in the trunk frame (m) for its three joint angles."""
    hip, thigh, knee = (float(v) for v in q_leg)
    x = -THIGH_M * math.sin(thigh) - CALF_M * math.sin(thigh + knee)
    y = LEG_SIDE[leg] * THIGH_OFFSET_M
    z = -THIGH_M * math.cos(thigh) - CALF_M * math.cos(thigh + knee)
    c, s = math.cos(hip), math.sin(hip)
    return HIP_OFFSETS_M[leg] + np.array([x, y * c - z * s, y * s + z * c])


def foot_positions(q) -> np.ndarray:
    """All four feet in the trunk frame, (4, 3) metres, for the 12 joint angles in motor order."""
    q = np.asarray(q, dtype=np.float64).reshape(4, 3)
    return np.stack([foot_position(leg, q[leg]) for leg in range(4)])


def foot_jacobian(leg: int, q_leg, step_rad: float = 1e-6) -> np.ndarray:
    """d foot / d q for one leg, (3, 3), by central differences."""
    q_leg = np.asarray(q_leg, dtype=np.float64)
    columns = []
    for joint in range(3):
        delta = np.zeros(3)
        delta[joint] = step_rad
        columns.append((foot_position(leg, q_leg + delta) - foot_position(leg, q_leg - delta)) / (2 * step_rad))
    return np.stack(columns, axis=1)


def tilt_rotation(roll: float, pitch: float) -> np.ndarray:
    """Rotation from the trunk frame to the heading frame: R_y(pitch) R_x(roll)."""
    cr, sr, cp, sp = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch)
    r_x = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    r_y = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    return r_y @ r_x


class LegOdometry:
    """Trunk velocity in the heading frame from readings; ``update`` returns the (filtered) estimate, (3,).

    ``alpha`` is the weight of a new estimate in a first-order low-pass (1 = no filter); with no foot
    in contact the last estimate is kept.
    """

    def __init__(self, alpha: float = 0.5, contact_threshold: float = 0.5) -> None:
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"LegOdometry: alpha {alpha!r} must be in (0, 1]; 1 turns the filter off")
        self.alpha = float(alpha)
        self.contact_threshold = float(contact_threshold)
        self.velocity = np.zeros(3)

    def reset(self) -> None:
        """Forgets the last estimate."""
        self.velocity = np.zeros(3)

    def update(self, q, dq, gyro, rpy, contact) -> np.ndarray:
        """One estimate from joint angles and velocities (12,), gyroscope (3,) rad/s, roll-pitch-yaw and contacts (4,)."""
        q = np.asarray(q, dtype=np.float64).reshape(4, 3)
        dq = np.asarray(dq, dtype=np.float64).reshape(4, 3)
        omega = np.asarray(gyro, dtype=np.float64).reshape(3)
        estimates = []
        for leg in range(4):
            if float(np.asarray(contact).reshape(4)[leg]) < self.contact_threshold:
                continue
            foot = foot_position(leg, q[leg])
            foot_velocity = foot_jacobian(leg, q[leg]) @ dq[leg]
            estimates.append(-(foot_velocity + np.cross(omega, foot)))
        if estimates:
            rpy = np.asarray(rpy, dtype=np.float64).reshape(3)
            measured = tilt_rotation(rpy[0], rpy[1]) @ np.mean(estimates, axis=0)
            self.velocity = self.alpha * measured + (1.0 - self.alpha) * self.velocity
        return self.velocity.copy()
