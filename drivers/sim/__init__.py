"""Simulated drivers: the mock devices, MuJoCo's UR5 and A1 (models/), Gymnasium environments, and the
realism settings (latency, jitter, dropped readings) they share."""
