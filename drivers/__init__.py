"""Hardware interfaces, the simulated device clock, the mock devices, the simulated (Gymnasium, MuJoCo) drivers and the registry."""

from drivers.base import TIMESTAMP_DOMAINS, Arm, Camera, Device, DeviceStatus, Legged, Reading, SteppedEnv
from drivers.device_clock import DeviceClock
from drivers.sim.gym_env import GymEnv
from drivers.sim.mock import MockArm, MockCamera, MockLegged
from drivers.registry import make, names, register
# Registers sim_ur5 and sim_camera; mujoco is imported only when one is constructed.
from drivers.sim.sim_ur5 import SimCamera, SimUR5
from drivers.sim.sim_a1 import SimA1
from drivers.real.a1 import A1
# Registers realsense; pyrealsense2 is imported only when one connects.
from drivers.real.realsense import RealSense
# The UR5 / UR5e over RTDE; ur-rtde is imported only when it connects.
from drivers.real.ur5 import UR5

__all__ = [
    "TIMESTAMP_DOMAINS",
    "A1",
    "Arm",
    "Camera",
    "Device",
    "DeviceClock",
    "DeviceStatus",
    "GymEnv",
    "Legged",
    "MockArm",
    "MockCamera",
    "MockLegged",
    "Reading",
    "RealSense",
    "SimA1",
    "SimCamera",
    "SimUR5",
    "SteppedEnv",
    "UR5",
    "make",
    "names",
    "register",
]
