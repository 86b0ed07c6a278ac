"""The Intel RealSense camera through pyrealsense2: the real Camera driver ``realsense``.

One frame path serves a live camera, a recording and a software device. A *frameset source* yields
librealsense framesets: ``PipelineSource`` wraps an ``rs.pipeline`` started on a live device (picked
by serial number) or on a recorded ``.db3``/``.bag`` file (played back not in real time), and
``SyncerSource`` wraps an ``rs.syncer`` fed by sensors the caller started (a ``rs.software_device``
in the tests: ``rs.pipeline`` cannot start on a software device). A background thread waits for
framesets (in bounded waits, so it notices a stop) and hands each to ``RealSense.process``:

- depth is aligned to colour with ``rs.align`` (with ``depth`` and ``align``);
- both images are cropped to ``crop`` (pixels of the stream image; by default the centred crop
  with the observation's aspect ratio) and resized to width x height: colour by area averaging,
  depth by nearest neighbour (a hole, depth 0, is never averaged into its neighbours), then
  converted to millimetres and optionally clipped to ``depth_max_mm``;
- the colour frame's timestamp (ms) becomes ``hw_time_ns`` with its domain, its frame number the
  reading's frame number, and ``time.monotonic_ns()`` when the frameset arrived its host time.

Gaps in the colour frame numbers count as dropped frames; a frame not newer than the last one is
ignored. A camera without per-frame metadata support stamps frames with the host clock
(``system_time``): the driver then warns once, loudly.

pyrealsense2 is imported only when a driver connects, so ``import drivers`` never needs it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from drivers.base import Camera, DeviceStatus, Reading
from drivers.registry import register
from drivers.settings import setting

log = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000
# How long the frame thread waits for one frameset before it looks at its stop flag again.
_WAIT_MS = 100
_INSTALL_HINT = "pip install 'robotd[realsense]' (and on Debian/Ubuntu: apt-get install libusb-1.0-0)"
_DOMAINS = {"hardware_clock": "hardware_clock", "global_time": "global_time", "system_time": "system_time"}


def import_rs():
    """pyrealsense2, or a one-line RuntimeError saying how to install it."""
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise RuntimeError(f"the realsense driver needs pyrealsense2, which does not import ({exc}); "
                           f"{_INSTALL_HINT}") from None
    return rs


class FramesetSource(Protocol):
    """Where the driver's frame thread gets framesets from."""

    device: Any  # the rs.device the frames come from, or None

    def wait(self, timeout_ms: int) -> Any:
        """The next frameset, or None when none arrives within timeout_ms."""

    def stop(self) -> None:
        """Stop producing frames (the driver calls it from disconnect())."""


class SyncerSource:
    """Framesets from an ``rs.syncer`` the caller feeds (sensors started with the syncer as callback)."""

    def __init__(self, syncer: Any, device: Any = None) -> None:
        self.syncer = syncer
        self.device = device

    def wait(self, timeout_ms: int) -> Any:
        """The next frameset from the syncer, or None after timeout_ms."""
        ok, frameset = self.syncer.try_wait_for_frames(timeout_ms)
        return frameset if ok else None

    def stop(self) -> None:
        """Nothing to stop: the sensors belong to the caller."""


class PipelineSource:
    """Framesets from a started ``rs.pipeline`` (a live camera or a recording)."""

    def __init__(self, pipeline: Any, profile: Any, playback: Any = None) -> None:
        self.pipeline = pipeline
        self.device = profile.get_device()
        self.playback = playback

    def wait(self, timeout_ms: int) -> Any:
        """The next frameset from the pipeline, or None after timeout_ms (at once when stopped)."""
        pipeline = self.pipeline
        if pipeline is None:
            return None
        ok, frameset = pipeline.try_wait_for_frames(timeout_ms)
        return frameset if ok else None

    def finished(self) -> bool:
        """True once a recording has played to its end."""
        if self.playback is None:
            return False
        rs = import_rs()
        return self.playback.current_status() == rs.playback_status.stopped

    def stop(self) -> None:
        """Stop the pipeline (once)."""
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop()
            except RuntimeError:
                pass  # already stopped (a recording that ended)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights that average n_in pixels into n_out by overlapping area (rows sum to 1)."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            weights[i, j] = max(0.0, min(hi, j + 1) - max(lo, j))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def nearest_index(start: int, n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of n_out pixels sampled at pixel centres from n_in pixels starting at start."""
    return start + np.minimum(n_in - 1, ((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64))


@register("realsense")
class RealSense(Camera):
    """An Intel RealSense D400-series camera: colour (rgb8) and depth (z16) at stream size, observed at width x height.

    Settings: :class:`RealSense.Args` (``cameras[i].args``). ``frame_source`` replaces the pipeline with another
    FramesetSource (tests); it is no setting, as a YAML file cannot hold it.
    """

    simulated = False

    @dataclass
    class Args:
        """The RealSense driver's settings: the streams, the observation and the link bound."""
        serial: str | None = setting(None, help="the camera's serial number, quoted (None: the only one connected)")
        stream_width: int = setting(640, range=(1, 8192), help="width of the colour and depth streams, pixels")
        stream_height: int = setting(480, range=(1, 8192), help="height of the colour and depth streams, pixels")
        fps: int = setting(30, range=(1, 300), help="frame rate of the streams")
        depth: bool = setting(True, help="stream depth beside colour")
        align: bool = setting(True, help="align depth to the colour image")
        width: int = setting(64, range=(1, 8192), help="width of the observation, pixels")
        height: int = setting(64, range=(1, 8192), help="height of the observation, pixels")
        crop: list[int] | None = setting(None, range=(0, 8192),
                                         help="[x0, y0, x1, y1] in stream pixels (default: the largest centred box "
                                              "with the observation's aspect ratio)")
        depth_max_mm: int | None = setting(None, range=(1, 65535), help="depth beyond this is clipped (None: no clip)")
        playback_file: str | None = setting(None, help="a .db3 or .bag recording to play instead of a live camera")
        frame_timeout_s: float = setting(1.0, range=(0.0, 3600.0),
                                         help="no frame for this long is a lost link, above 0")

        def __post_init__(self) -> None:
            if self.serial is not None and not self.serial.strip():
                raise ValueError(f"serial = {self.serial!r} must be the camera's serial number as a string (quote it "
                                 f"in YAML) or None")
            if self.playback_file is not None and not self.playback_file.endswith((".db3", ".bag")):
                raise ValueError(f"playback_file = {self.playback_file!r} must be the path of a .db3 or .bag "
                                 f"recording or None")
            if self.frame_timeout_s == 0.0:
                raise ValueError("frame_timeout_s = 0.0 must be above 0: use e.g. 1")
            self.crop_box = self._crop_box()

        def _crop_box(self) -> tuple[int, int, int, int]:
            """The crop box, checked against the stream size, or the centred crop with the observation's aspect."""
            sw, sh = self.stream_width, self.stream_height
            if self.crop is None:
                # The largest centred box with aspect width:height inside the stream image.
                if sw * self.height >= sh * self.width:
                    cw, ch = round(sh * self.width / self.height), sh
                else:
                    cw, ch = sw, round(sw * self.height / self.width)
                x0, y0 = (sw - cw) // 2, (sh - ch) // 2
                return x0, y0, x0 + cw, y0 + ch
            if len(self.crop) != 4:
                raise ValueError(f"crop = {self.crop!r} must be [x0, y0, x1, y1] integer pixels of the stream image")
            x0, y0, x1, y1 = self.crop
            if not (0 <= x0 < x1 <= sw and 0 <= y0 < y1 <= sh):
                raise ValueError(f"crop = {self.crop!r} must satisfy 0 <= x0 < x1 <= {sw} and 0 <= y0 < y1 <= {sh} "
                                 f"(the stream size): fix crop or stream_width/stream_height")
            return x0, y0, x1, y1

    def __init__(self, *, name: str = "camera", frame_source: FramesetSource | None = None, **args) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"RealSense: name must be a non-empty string, got {name!r}")
        self.name = name
        owner = self._owner
        if isinstance(args.get("playback_file"), os.PathLike):
            args["playback_file"] = os.fspath(args["playback_file"])
        a = self.settings(args, owner)
        self.serial = a.serial
        self.stream_width, self.stream_height = a.stream_width, a.stream_height
        self.width, self.height = width, height = a.width, a.height
        self.stream_fps = a.fps
        self.fps = float(a.fps)
        self.depth, self.align = a.depth, a.align
        self.crop = a.crop_box
        self.depth_max_mm = a.depth_max_mm
        self.playback_file = a.playback_file
        self.frame_timeout_s = a.frame_timeout_s
        if frame_source is not None and not (callable(getattr(frame_source, "wait", None))
                                             and callable(getattr(frame_source, "stop", None))):
            raise ValueError(f"{owner}: frame_source must have wait(timeout_ms) and stop(), got {frame_source!r}")
        self._injected = frame_source
        x0, y0, x1, y1 = self.crop
        self._rows = area_weights(y1 - y0, height)
        self._cols_t = np.ascontiguousarray(area_weights(x1 - x0, width).T)
        self._depth_rows = nearest_index(y0, y1 - y0, height)
        self._depth_cols = nearest_index(x0, x1 - x0, width)

        self.counters = {"frames": 0, "dropped_frames": 0, "stale_frames": 0, "incomplete_framesets": 0,
                         "wrong_size": 0, "errors": 0}
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: FramesetSource | None = None
        self._align_block = None
        self._reading: Reading | None = None
        self._last_frame_number: int | None = None
        self._last_host_ns = 0
        self._connect_ns = 0
        self._arrivals: deque[int] = deque(maxlen=61)
        self._domain: str | None = None
        self._warned_system_time = False
        self._error: str | None = None
        self._device_info: dict[str, str] = {}

    @property
    def _who(self) -> str:
        serial = self._device_info.get("serial") or self.serial
        return f"{self._owner} (serial {serial})" if serial else self._owner

    # ----------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Start the streams (live camera, recording or injected source) and the frame thread."""
        if self._thread is not None:
            return
        rs = import_rs()
        if self._injected is not None:
            source = self._injected
        elif self.playback_file is not None:
            source = self._start_playback(rs)
        else:
            source = self._start_live(rs)
        self._source = source
        self._device_info = self._read_device_info(rs, getattr(source, "device", None))
        with self._lock:
            self._reading = None
            self._last_frame_number = None
            self._arrivals.clear()
            self._error = None
        self._first.clear()
        self._stop.clear()
        self._connect_ns = time.monotonic_ns()
        self._last_host_ns = self._connect_ns
        self._thread = threading.Thread(target=self._run, name=f"realsense-{self.name}", daemon=True)
        self._thread.start()

    def _config_streams(self, rs, config) -> None:
        config.enable_stream(rs.stream.color, self.stream_width, self.stream_height, rs.format.rgb8, self.stream_fps)
        if self.depth:
            config.enable_stream(rs.stream.depth, self.stream_width, self.stream_height, rs.format.z16,
                                 self.stream_fps)

    def _streams_text(self) -> str:
        what = "colour rgb8" + (" + depth z16" if self.depth else "")
        return f"{what} {self.stream_width}x{self.stream_height} at {self.stream_fps} fps"

    def _start_live(self, rs) -> PipelineSource:
        devices = list(rs.context().query_devices())
        serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
        listed = ", ".join(serials) or "none"
        if self.serial is not None and self.serial not in serials:
            raise RuntimeError(f"{self._owner}: no device with serial {self.serial} (connected: {listed}): "
                               f"check the cable and camera serial")
        if self.serial is None and len(serials) != 1:
            if not serials:
                raise RuntimeError(f"{self._owner}: no RealSense device connected (connected: none): "
                                   f"check the cable and power")
            raise RuntimeError(f"{self._owner}: {len(serials)} RealSense devices connected ({listed}); "
                               f"pick one with serial: <number>")
        serial = self.serial or serials[0]
        pipeline, config = rs.pipeline(), rs.config()
        config.enable_device(serial)
        self._config_streams(rs, config)
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            raise RuntimeError(f"{self._owner}: camera {serial} cannot stream {self._streams_text()} ({exc}); "
                               f"pick a size and rate the camera supports") from None
        return PipelineSource(pipeline, profile)

    def _start_playback(self, rs) -> PipelineSource:
        path = self.playback_file
        if not os.path.isfile(path):
            raise RuntimeError(f"{self._owner}: playback_file {path!r} does not exist; record one or fix the path")
        pipeline, config = rs.pipeline(), rs.config()
        config.enable_device_from_file(path, repeat_playback=False)
        self._config_streams(rs, config)
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            raise RuntimeError(f"{self._owner}: recording {path!r} has no {self._streams_text()} ({exc}); "
                               f"set stream_width/stream_height/fps/depth to the recorded streams") from None
        playback = profile.get_device().as_playback()
        playback.set_real_time(False)
        return PipelineSource(pipeline, profile, playback)

    @staticmethod
    def _read_device_info(rs, device) -> dict[str, str]:
        info = {}
        for key, field in (("serial", "serial_number"), ("product", "name"), ("firmware", "firmware_version"),
                           ("usb_type", "usb_type_descriptor")):
            value = "unknown"
            try:
                which = getattr(rs.camera_info, field)
                if device is not None and device.supports(which):
                    value = device.get_info(which)
            except (RuntimeError, AttributeError):
                pass
            info[key] = value
        if info["serial"] == "unknown":
            info["serial"] = ""
        return info

    def disconnect(self) -> None:
        """Stop the frame thread and the streams; safe to call more than once."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(2.0 + _WAIT_MS / 1000)
        source, self._source = self._source, None
        if source is not None:
            source.stop()

    # ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        source = self._source
        while not self._stop.is_set():
            try:
                frameset = source.wait(_WAIT_MS)
            except RuntimeError as exc:
                self._record_error(f"waiting for frames: {exc}")
                self._stop.wait(_WAIT_MS / 1000)
                continue
            if frameset is None:
                continue
            host_ns = time.monotonic_ns()
            try:
                reading = self.process(frameset, host_ns)
            except Exception as exc:  # noqa: BLE001 - one bad frameset never stops the camera
                self._record_error(f"processing a frameset: {exc!r}")
                continue
            finally:
                del frameset  # give the frame buffers back to librealsense's pool
            if reading is not None:
                with self._lock:
                    self._reading = reading
                self._first.set()

    def _record_error(self, what: str) -> None:
        with self._lock:
            self.counters["errors"] += 1
            first = self._error is None
            self._error = what
        if first:
            log.error("%s: %s", self._who, what)

    def process(self, frameset: Any, host_ns: int | None = None) -> Reading | None:
        """Turn one frameset into a Reading (or None for an incomplete, wrong-sized or old one), counting drops."""
        if host_ns is None:
            host_ns = time.monotonic_ns()
        if self.depth and self.align and frameset.size() >= 2:
            if self._align_block is None:
                rs = import_rs()
                self._align_block = rs.align(rs.stream.color)
            frameset = self._align_block.process(frameset)
        colour = frameset.get_color_frame()
        depth_frame = frameset.get_depth_frame() if self.depth else None
        if not colour or (self.depth and not depth_frame):
            with self._lock:
                self.counters["incomplete_framesets"] += 1
            return None
        frame_number = int(colour.get_frame_number())
        with self._lock:
            last = self._last_frame_number
            if last is not None and frame_number <= last:
                self.counters["stale_frames"] += 1
                return None
        image = np.asanyarray(colour.get_data())
        depth_raw = np.asanyarray(depth_frame.get_data()) if depth_frame else None
        shape = (self.stream_height, self.stream_width)
        if image.shape != shape + (3,) or (depth_raw is not None and depth_raw.shape != shape):
            with self._lock:
                self.counters["wrong_size"] += 1
            return None
        values = {"image": self.resize_image(image)}
        if depth_raw is not None:
            units_m = depth_frame.as_depth_frame().get_units() or 0.001
            values["depth"] = self.resize_depth(depth_raw, units_m * 1000.0)
        domain = self._domain_name(colour.get_frame_timestamp_domain())
        hw_time_ns = round(colour.get_timestamp() * _NS_PER_MS) if domain is not None else host_ns
        reading = Reading(values, hw_time_ns, host_ns, domain or "system_time", frame_number=frame_number)
        with self._lock:
            if last is not None and frame_number > last + 1:
                self.counters["dropped_frames"] += frame_number - last - 1
            self._last_frame_number = frame_number
            self.counters["frames"] += 1
            self._last_host_ns = host_ns
            self._arrivals.append(host_ns)
            self._domain = domain or "system_time"
        if reading.domain == "system_time" and not self._warned_system_time:
            self._warned_system_time = True
            log.warning("%s STAMPS FRAMES WITH THE HOST CLOCK (system_time), NOT THE CAMERA'S: hardware timestamps "
                        "need the per-frame metadata kernel patch (librealsense's patch-realsense-ubuntu-lts or "
                        "the RSUSB backend) and a recent firmware; until then timestamps carry the host's USB "
                        "receive jitter", self._who)
        return reading

    @staticmethod
    def _domain_name(domain) -> str | None:
        """The Reading domain of an rs.timestamp_domain, or None for one the daemon cannot align."""
        return _DOMAINS.get(getattr(domain, "name", str(domain).rsplit(".", 1)[-1]))

    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """Crop a (stream_height, stream_width, 3) uint8 image and area-average it to (height, width, 3) uint8."""
        x0, y0, x1, y1 = self.crop
        box = image[y0:y1, x0:x1].astype(np.float32)
        rows = self._rows @ box.reshape(y1 - y0, -1)  # (height, crop width * 3)
        rows = rows.reshape(self.height, x1 - x0, 3).transpose(0, 2, 1)  # (height, 3, crop width)
        out = (rows @ self._cols_t).transpose(0, 2, 1)  # (height, width, 3)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def resize_depth(self, depth: np.ndarray, mm_per_unit: float = 1.0) -> np.ndarray:
        """Crop a (stream_height, stream_width) z16 depth image and sample it (nearest) to (height, width) uint16 mm."""
        out = depth[np.ix_(self._depth_rows, self._depth_cols)]
        if abs(mm_per_unit - 1.0) > 1e-9:
            out = np.clip(np.rint(out * mm_per_unit), 0, 65535)
        out = out.astype(np.uint16)
        if self.depth_max_mm is not None:
            np.minimum(out, self.depth_max_mm, out=out)
        return out

    # ----------------------------------------------------------------------------------------
    def read(self) -> Reading:
        """The newest frame; before the first one it waits until frame_timeout_s after connect(), then raises."""
        if self._thread is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        if not self._first.is_set():
            remaining_s = self.frame_timeout_s - (time.monotonic_ns() - self._connect_ns) / _NS_PER_S
            if not self._first.wait(max(0.0, remaining_s)):
                raise RuntimeError(f"{self._who}: no frame within frame_timeout_s={self.frame_timeout_s:g} s "
                                   f"after connect: check the USB cable, power and that nothing else uses "
                                   f"the camera")
        with self._lock:
            reading = self._reading
        values = {key: value.copy() for key, value in reading.values.items()}
        return Reading(values, reading.hw_time_ns, reading.host_time_ns, reading.domain,
                       frame_number=reading.frame_number)

    def status(self) -> DeviceStatus:
        """ok while frames keep arriving; link_lost once none came for frame_timeout_s."""
        if self._thread is None:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        with self._lock:
            age_s = (time.monotonic_ns() - self._last_host_ns) / _NS_PER_S
            got_any = self._reading is not None
        if age_s <= self.frame_timeout_s:
            return DeviceStatus()
        source = self._source
        if isinstance(source, PipelineSource) and source.finished():
            why = f"the recording {self.playback_file!r} has ended"
        elif got_any:
            why = f"no frame for {age_s:.1f} s (frame_timeout_s={self.frame_timeout_s:g})"
        else:
            why = f"no frame at all in {age_s:.1f} s since connect (frame_timeout_s={self.frame_timeout_s:g})"
        return DeviceStatus(ok=False, fault=f"{self._who}: {why}: check the USB cable and power", link_lost=True)

    def info(self) -> dict[str, Any]:
        """What ``robotd check`` shows: device identity, streams, measured rate, timestamp domain and counters."""
        with self._lock:
            arrivals = list(self._arrivals)
            domain = self._domain
            counters = dict(self.counters)
        measured = None
        if len(arrivals) >= 2 and arrivals[-1] > arrivals[0]:
            measured = (len(arrivals) - 1) * _NS_PER_S / (arrivals[-1] - arrivals[0])
        if domain == "system_time":
            domain_text = ("system_time (no hardware timestamps: needs the per-frame metadata kernel patch / "
                           "firmware; timestamps carry host receive jitter)")
        else:
            domain_text = domain or "none yet (no frame received)"
        device = self._device_info
        return {
            "name": self.name,
            "serial": device.get("serial") or self.serial or "unknown",
            "product": device.get("product", "unknown"),
            "firmware": device.get("firmware", "unknown"),
            "usb_type": device.get("usb_type", "unknown"),
            "source": ("injected" if self._injected is not None
                       else f"recording {self.playback_file}" if self.playback_file else "live"),
            "stream": f"{self.stream_width}x{self.stream_height}@{self.stream_fps}",
            "depth": self.depth,
            "align": self.align,
            "observation": f"{self.width}x{self.height}",
            "crop": list(self.crop),
            "measured_fps": measured,
            "timestamp_domain": domain_text,
            "frames_received": counters["frames"],
            "dropped_frames": counters["dropped_frames"],
            "counters": counters,
        }
