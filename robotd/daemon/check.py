"""``robotd check CONFIG``: connect to every configured device and say what was found.

For each device (the robot, then every camera): the driver is built from its config entry and
connected; for ``seconds`` its readings are polled, giving the rate at which new hardware
timestamps arrive, the clock offset and drift of its timestamps against host time, the timestamp
domain, frames dropped (gaps in frame numbers) and its status (stops, falls, lost links). A driver
with an ``info()`` method adds what only it knows (versions, serial numbers, measured rates).
Then the safety limits in force are printed, and the device is disconnected, leaving it stopped.

Nothing is commanded: a check never moves a robot. The exit code is 0 when every device answered
and is healthy, 1 otherwise, with one line per failure naming the device, its driver and address.
"""
from __future__ import annotations

import dataclasses
import time

from drivers import registry
from drivers.base import Arm, Legged
from robotd.config import Config, DeviceConfig
from robotd.daemon.robot_io import make_device
from robotd.daemon.timesync import ClockOffsetEstimator

# Config args that say where a device is, in the order they are shown.
ADDRESS_ARGS = (("host", None), ("robot_ip", "robot_port"), ("serial", None), ("playback_file", None))


def device_address(device: DeviceConfig) -> str:
    """Where a configured device is (its host, IP:port or serial), or "(simulated)" / "(default)"."""
    args = device.args
    for key, port_key in ADDRESS_ARGS:
        if args.get(key) is not None:
            port = f":{args[port_key]}" if port_key and args.get(port_key) is not None else ""
            return f"{key} {args[key]}{port}"
    if "serial" in args:
        return "serial (any: the only connected camera)"
    return "(no address: simulated or default device)"


@dataclasses.dataclass
class DeviceReport:
    """What a check found for one device; ``error`` is set when it failed."""

    role: str
    name: str
    driver: str
    address: str
    lines: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


def _measure(device, seconds: float) -> list[str]:
    """Polls the device's readings for ``seconds``: rate of new timestamps, clock offset and drift, drops."""
    estimator = ClockOffsetEstimator(window_s=max(0.5, seconds))
    stamps, frames, domains = [], [], set()
    device.read()                         # a first read may set things up (a renderer, a stream): not measured
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reading = device.read()
        if not stamps or reading.hw_time_ns != stamps[-1]:
            stamps.append(reading.hw_time_ns)
            estimator.update(reading.hw_time_ns, reading.host_time_ns)
            if reading.frame_number is not None:
                frames.append(reading.frame_number)
        domains.add(reading.domain)
        time.sleep(0.0005)
    lines = []
    if len(stamps) > 1 and stamps[-1] > stamps[0]:
        rate = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)
        lines.append(f"new readings: {len(stamps)} in {seconds:g} s, {rate:.1f} Hz by the device clock")
    else:
        lines.append(f"new readings: {len(stamps)} in {seconds:g} s (the device timestamp did not advance)")
    lines.append(f"timestamp domain: {', '.join(sorted(domains))}"
                 + ("  WARNING: host receive time, not the device's clock" if "system_time" in domains else ""))
    if estimator.ready:
        lines.append(f"clock offset host - device: {estimator.offset_ns / 1e9:+.6f} s, drift {estimator.drift_ppm:+.1f} ppm")
    if len(frames) > 1:
        dropped = sum(max(0, b - a - 1) for a, b in zip(frames, frames[1:]))
        lines.append(f"frames: {frames[0]}..{frames[-1]}, {dropped} dropped")
    return lines


def check_device(role: str, device_config: DeviceConfig, seed: int, seconds: float) -> DeviceReport:
    """Builds, connects, measures and disconnects one device; never raises for a device's own failure."""
    report = DeviceReport(role, device_config.name, device_config.driver, device_address(device_config))
    where = f"{role} {device_config.name!r} (driver {device_config.driver}, {report.address})"
    try:
        device = make_device(device_config, seed)
    except (ValueError, TypeError) as exc:
        report.error = f"{where}: misconfigured: {exc}"
        return report
    device.name = device_config.name
    try:
        device.connect()
    except Exception as exc:  # noqa: BLE001 - any driver failure to connect is reported, not raised
        report.error = f"{where}: unreachable: {exc}"
        return report
    try:
        spec = device.reading_spec()
        report.lines.append("readings: " + ", ".join(f"{key} {tuple(shape)} {dtype}" for key, (shape, dtype)
                                                     in spec.items()))
        report.lines.extend(_measure(device, seconds))
        info = getattr(device, "info", None)
        if callable(info):
            for key, value in info().items():
                report.lines.append(f"{key}: {value}")
        status = device.status()
        if status.link_lost or not status.ok:
            flags = [name for name in ("protective_stop", "emergency_stop", "fallen", "link_lost")
                     if getattr(status, name)]
            report.error = f"{where}: not ready ({', '.join(flags) or 'fault'}): {status.fault}"
        else:
            report.lines.append("status: ok")
    except Exception as exc:  # noqa: BLE001 - a device that fails while measured is reported
        report.error = f"{where}: failed while reading: {type(exc).__name__}: {exc}"
    finally:
        try:
            device.disconnect()
        except Exception as exc:  # noqa: BLE001
            report.lines.append(f"disconnect failed: {exc}")
    return report


def safety_lines(config: Config, kind: str) -> list[str]:
    """The limits the safety layer will enforce for this robot kind."""
    control = config.control
    lines = [f"control: {control.rate_hz:g} Hz, action deadline {control.action_deadline_ms:g} ms, fallback "
             f"{control.fallback}, watchdog {control.watchdog_s:g} s, pacing {control.pacing}"]
    section = {"arm": config.safety.arm, "legged": config.safety.legged}.get(kind)
    if section is not None:
        fields = ", ".join(f"{f.name} {getattr(section, f.name)}" for f in dataclasses.fields(section))
        lines.append(f"safety.{kind}: {fields}")
    return lines


def run(config: Config, *, seconds: float = 2.0, out=print, err=print) -> int:
    """Checks every configured device, prints the report with ``out`` and the failures with ``err``; returns the
    exit code (0 when every device is healthy)."""
    reports = [check_device("robot", config.robot, config.seed, seconds)]
    reports += [check_device("camera", camera, config.seed + 1 + i, seconds) for i, camera in enumerate(config.cameras)]
    robot_cls = registry.driver_class(config.robot.driver)
    kind = next((name for name, base in (("arm", Arm), ("legged", Legged))
                 if robot_cls is not None and issubclass(robot_cls, base)), "sim")
    for report in reports:
        verdict = "FAILED" if report.error else "ok"
        out(f"{report.role} {report.name!r}: driver {report.driver}, {report.address}: {verdict}")
        for line in report.lines:
            out(f"    {line}")
    out("limits in force:")
    for line in safety_lines(config, kind):
        out(f"    {line}")
    failures = [report.error for report in reports if report.error]
    for failure in failures:
        err(f"robotd check: error: {failure}")
    return 1 if failures else 0
