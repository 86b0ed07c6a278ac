"""Protocol peers for tests and benchmarks: a UR controller (RTDE, dashboard, script), an A1 (UDP), a
RealSense (a software device in pyrealsense2) and a Robotiq URCap, each on loopback. No session loads them;
the real drivers are tested against them."""
