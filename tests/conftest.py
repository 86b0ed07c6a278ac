"""Suite-wide settings: every device address in a test must be a loopback address (see robotd.robot_io)."""
import os

# A real-robot config run by a test without its address overridden to a fake is refused before it connects.
os.environ.setdefault("ROBOTD_LOOPBACK_ONLY", "1")
