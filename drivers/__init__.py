"""Hardware interfaces, the simulated device clock, the mock devices, the simulated (Gymnasium, MuJoCo) drivers and the registry."""

from drivers.base import TIMESTAMP_DOMAINS, Arm, Camera, Device, DeviceStatus, Legged, Reading, SteppedEnv
from drivers.device_clock import DeviceClock
from drivers.gym_env import GymEnv
from drivers.mock import MockArm, MockCamera, MockLegged
from drivers.registry import make, names, register
# Registers sim_ur5 and sim_camera; mujoco is imported only when one is constructed.
from drivers.sim_ur5 import SimCamera, SimUR5
from drivers.sim_a1 import SimA1

__all__ = [
    "TIMESTAMP_DOMAINS",
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
    "SimA1",
    "SimCamera",
    "SimUR5",
    "SteppedEnv",
    "make",
    "names",
    "register",
]
