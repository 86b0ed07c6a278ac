"""robotd check: connects to every configured device, reports what it found, fails naming device and address."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robotd import config

from robotd.daemon import check

ROOT = Path(__file__).resolve().parent.parent


def run_check(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "robotd", "check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_mock_robot_reports_rate_domain_clock_and_limits():
    lines = []
    code = check.run(config.load(ROOT / "configs" / "mock_legged.yaml", []), seconds=0.3, out=lines.append,
                     err=lines.append)
    text = "\n".join(lines)
    assert code == 0, text
    assert "robot 'legs': driver mock_legged" in text and ": ok" in text
    assert "timestamp domain: hardware_clock" in text
    assert "clock offset host - device:" in text
    assert "Hz by the device clock" in text
    assert "safety.legged:" in text and "tau_max_nm 33.5" in text


def test_unreachable_ur5_fails_in_one_line_naming_device_and_address():
    started = time.monotonic()
    result = run_check("configs/ur5_reach.yaml", "--set", "robot.args.host=127.0.0.77", "--seconds", "0.2")
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("robotd check: error:")]
    assert len(errors) == 1, result.stderr
    assert "robot 'arm' (driver ur5, host 127.0.0.77)" in errors[0] and "unreachable" in errors[0]
    assert "30004" in errors[0]
    assert time.monotonic() - started < 30


def test_lab_address_is_refused_under_loopback_only():
    # The suite runs with ROBOTD_LOOPBACK_ONLY=1 (tests/conftest.py): the unmodified real-robot config is refused
    # before anything connects.
    result = run_check("configs/ur5_reach.yaml", "--seconds", "0.2")
    assert result.returncode == 1
    assert "192.168.1.102" in result.stderr and "not a loopback address" in result.stderr


def test_misconfigured_driver_args_fail_at_load_naming_the_argument_before_any_device_is_touched():
    result = run_check("configs/mock_legged.yaml", "--set", "robot.args.no_such_arg=1", "--seconds", "0.2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robotd check: error: config: unknown key "
                                                   "'robot.args.no_such_arg': known keys here are "), lines


@pytest.mark.parametrize("name", ["ur5_reach", "ur5_pick_place", "a1_walk"])
def test_real_robot_configs_load_and_name_a_real_driver(name):
    loaded = config.load(ROOT / "configs" / f"{name}.yaml", [])
    assert loaded.control.pacing == "realtime"
    assert not loaded.robot.driver.startswith(("sim_", "mock_"))
    assert check.device_address(loaded.robot) != "(no address: simulated or default device)"


def test_check_against_the_fake_a1_reports_its_rate_tick_and_clock():
    pytest.importorskip("mujoco", reason="the fake A1 runs the MuJoCo A1 (pip install 'robotd[sim]')")
    from drivers.fakes.a1 import FakeA1

    with FakeA1("127.0.0.1") as fake:
        host, port = fake.address
        result = run_check("configs/a1_walk.yaml", "--set", f"robot.args.robot_ip={host}",
                           "--set", f"robot.args.robot_port={port}", "--set", "robot.args.local_port=0",
                           "--set", "robot.args.local_ip=127.0.0.1", "--seconds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"robot 'legs': driver a1, robot_ip {host}:{port}: ok" in out
    assert "timestamp domain: hardware_clock" in out and "clock offset host - device" in out
    assert "base_vel_est (3,) float32" in out
    assert fake.counters["malformed"] == 0
    # a check never commands motion: only damping (kp 0) ever reached the fake
    commands = [command for _, command in fake.commands]
    assert commands and all(float(np.max(command["kp"])) == 0.0 for command in commands)
