"""Hardware interfaces, the simulated device clock, the mock devices and the driver registry."""

from drivers.base import TIMESTAMP_DOMAINS, Arm, Camera, Device, DeviceStatus, Legged, Reading
from drivers.device_clock import DeviceClock
from drivers.mock import MockArm, MockCamera, MockLegged
from drivers.registry import make, names, register

__all__ = [
    "TIMESTAMP_DOMAINS",
    "Arm",
    "Camera",
    "Device",
    "DeviceClock",
    "DeviceStatus",
    "Legged",
    "MockArm",
    "MockCamera",
    "MockLegged",
    "Reading",
    "make",
    "names",
    "register",
]
