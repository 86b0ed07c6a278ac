"""A software RealSense for tests and benchmarks: pyrealsense2's own software device, no hardware.

A z16 depth sensor and an rgb8 colour sensor with intrinsics and extrinsics (so ``rs.align`` works),
feeding an ``rs.syncer`` (or, when recording, an ``rs.recorder`` into a ``.db3`` file). Frames are
injected with chosen pixels, timestamps, timestamp domains and frame numbers; ``source()`` hands the
syncer to the realsense driver (``RealSense(frame_source=...)``), which then runs its hardware frame
path on them.

librealsense quirks (2.59.1): the syncer emits the first depth and colour frames as two single-frame
framesets and pairs later frames only when the streams' timestamps start below one frame period (so
``ts_ms`` starts at 5 ms); ``rs.syncer()`` keeps one frameset by default (a deeper queue is used here);
``rs.recorder`` accepts only a ``.db3`` file.
"""
from __future__ import annotations

import numpy as np

from drivers.real.realsense import SyncerSource, import_rs

W, H, FPS = 640, 480, 30
PERIOD_MS = 1000.0 / FPS


def _domains(rs) -> dict:
    return {"hardware_clock": rs.timestamp_domain.hardware_clock, "global_time": rs.timestamp_domain.global_time,
            "system_time": rs.timestamp_domain.system_time}


def ts_ms(n: int) -> float:
    """Frame n's timestamp: the syncer pairs frames only when the first timestamp is below one period."""
    return 5.0 + n * PERIOD_MS


def intrinsics(ppx_shift: float = 0.0):
    """Pinhole intrinsics of a W x H stream, fx = fy = 600, the principal point shifted ppx_shift pixels in x."""
    rs = import_rs()
    intr = rs.intrinsics()
    intr.width, intr.height = W, H
    intr.ppx, intr.ppy = W / 2 + ppx_shift, H / 2
    intr.fx = intr.fy = 600.0
    intr.model = rs.distortion.none
    intr.coeffs = [0.0] * 5
    return intr


class SoftwareRealSense:
    """A software RealSense: a z16 depth sensor and an rgb8 colour sensor, W x H at FPS, frames injected by ``inject``.

    ``colour_ppx_shift`` moves the colour camera's principal point (for alignment tests); ``record_to`` records
    everything into that ``.db3`` file instead of feeding a syncer."""

    def __init__(self, *, colour_ppx_shift: float = 0.0, serial: str = "SW0001", record_to: str | None = None):
        rs = import_rs()
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.name, "Software RealSense")
        self.depth_sensor = self.device.add_sensor("Depth")
        self.colour_sensor = self.device.add_sensor("Color")
        self.depth_profile = self.depth_sensor.add_video_stream(self._stream(rs.stream.depth, 0, rs.format.z16, 2,
                                                                             intrinsics()))
        self.depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
        self.colour_profile = self.colour_sensor.add_video_stream(
            self._stream(rs.stream.color, 1, rs.format.rgb8, 3, intrinsics(colour_ppx_shift)))
        extrinsics = rs.extrinsics()
        extrinsics.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        extrinsics.translation = [0.0, 0.0, 0.0]
        self.depth_profile.register_extrinsics_to(self.colour_profile, extrinsics)
        self.device.create_matcher(rs.matchers.default)
        self.recorder = None
        if record_to is not None:
            self.recorder = rs.recorder(record_to, self.device)
            sensors = self.recorder.query_sensors()
            self.sink = rs.frame_queue(64)
        else:
            sensors = [self.depth_sensor, self.colour_sensor]
            self.sink = rs.syncer(64)
        self._started = sensors
        sensors[0].open(self.depth_profile)
        sensors[1].open(self.colour_profile)
        for sensor in sensors:
            sensor.start(self.sink)
        self._keep = []

    @staticmethod
    def _stream(kind, uid, fmt, bpp, intr):
        stream = import_rs().video_stream()
        stream.type, stream.index, stream.uid = kind, 0, uid
        stream.width, stream.height, stream.fps = W, H, FPS
        stream.bpp, stream.fmt, stream.intrinsics = bpp, fmt, intr
        return stream

    def inject(self, n: int, colour: np.ndarray, depth: np.ndarray, *, t_ms: float | None = None,
               domain: str = "hardware_clock") -> None:
        """Frame n of both streams (depth first), with timestamp t_ms (default ts_ms(n)) in ``domain``."""
        rs = import_rs()
        t_ms = ts_ms(n) if t_ms is None else t_ms
        for sensor, profile, pixels, bpp in ((self.depth_sensor, self.depth_profile, depth, 2),
                                             (self.colour_sensor, self.colour_profile, colour, 3)):
            frame = rs.software_video_frame()
            frame.pixels = np.ascontiguousarray(pixels)
            frame.bpp, frame.stride = bpp, bpp * W
            frame.timestamp, frame.domain, frame.frame_number = t_ms, _domains(rs)[domain], n
            frame.profile = profile.as_video_stream_profile()
            self._keep.append((frame, pixels))
            sensor.on_video_frame(frame)

    def source(self) -> SyncerSource:
        """The syncer as the driver's frame source."""
        return SyncerSource(self.sink, self.device)

    def close(self) -> None:
        """Stops and closes the sensors."""
        for sensor in self._started:
            sensor.stop()
            sensor.close()
        self._started = []
        self.recorder = None
