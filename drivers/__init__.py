"""Hardware interfaces, the simulated device clock, the mock devices, the Gymnasium driver and the registry."""

from drivers.base import TIMESTAMP_DOMAINS, Arm, Camera, Device, DeviceStatus, Legged, Reading, SteppedEnv
from drivers.device_clock import DeviceClock
from drivers.gym_env import GymEnv
from drivers.mock import MockArm, MockCamera, MockLegged
from drivers.registry import make, names, register

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
    "SteppedEnv",
    "make",
    "names",
    "register",
]
