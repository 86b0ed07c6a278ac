"""Drivers for real hardware: the UR5 / UR5e over RTDE (ur-rtde) with a Robotiq gripper, the Unitree A1
over its low-level UDP protocol (written here), and the Intel RealSense (pyrealsense2)."""
