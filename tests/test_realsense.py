"""The realsense driver through the real pyrealsense2: a software device feeding an rs.syncer, and a recording.

librealsense quirks these tests work around (2.59.1):
- rs.syncer emits the first depth and colour frames as two single-frame framesets, and pairs later
  frames only when the streams' timestamps start below one frame period: with a first timestamp of
  100 ms or more it emits the frames singly again from the third frame on. The frames here start at 5 ms.
- rs.syncer() keeps one frameset by default (older ones are dropped): the tests use a deeper queue.
- rs.recorder accepts only a .db3 file, and playback of a 10-frame recording drops the first frames.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import pytest

try:
    import pyrealsense2 as rs
except ImportError as exc:  # pragma: no cover - depends on the machine
    print(f"test_realsense skipped: pyrealsense2 does not import ({exc})")
    pytest.skip(f"pyrealsense2 does not import ({exc}); pip install pyrealsense2 and apt-get install libusb-1.0-0",
                allow_module_level=True)

from drivers import make
from drivers.fakes.realsense import H, W, SoftwareRealSense, ts_ms
from drivers.real.realsense import RealSense, area_weights, import_rs

DOMAINS = {"hardware_clock": rs.timestamp_domain.hardware_clock, "global_time": rs.timestamp_domain.global_time,
           "system_time": rs.timestamp_domain.system_time}


def plain(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour with every pixel n, depth 1000 + n mm."""
    return np.full((H, W, 3), n % 256, np.uint8), np.full((H, W), 1000 + n, np.uint16)


def wait_until(condition, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return bool(condition())


@pytest.fixture
def softcam():
    cams = []

    def build(**kwargs) -> SoftwareRealSense:
        cams.append(SoftwareRealSense(**kwargs))
        return cams[-1]

    yield build
    for cam in cams:
        cam.close()


@pytest.fixture
def driver():
    made = []

    def build(**kwargs) -> RealSense:
        made.append(RealSense(**kwargs))
        return made[-1]

    yield build
    for cam in made:
        cam.disconnect()


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("domain", ["hardware_clock", "global_time"])
def test_readings_carry_injected_timestamps_domains_and_frame_numbers(softcam, driver, domain):
    cam = softcam()
    camera = driver(frame_source=cam.source(), width=32, height=24)
    camera.connect()
    for n in range(5):
        cam.inject(n, *plain(n), domain=domain)
        if n == 0:
            continue  # the syncer emits frame 0's depth and colour apart: no complete frameset
        assert wait_until(lambda: camera.counters["frames"] == n), camera.counters
        reading = camera.read()
        assert reading.frame_number == n
        assert reading.hw_time_ns == round(ts_ms(n) * 1_000_000)
        assert reading.domain == domain
        assert reading.values["image"].shape == (24, 32, 3) and reading.values["image"].dtype == np.uint8
        assert np.all(reading.values["image"] == n)
        assert reading.values["depth"].dtype == np.uint16 and np.all(reading.values["depth"] == 1000 + n)
        assert abs(reading.host_time_ns - time.monotonic_ns()) < 2_000_000_000
    assert camera.counters["incomplete_framesets"] == 2
    assert camera.counters["dropped_frames"] == 0
    assert camera.status().ok
    info = camera.info()
    assert info["serial"] == "SW0001" and info["frames_received"] == 4
    assert info["timestamp_domain"] == domain and info["firmware"] == "unknown"
    assert camera.reading_spec() == {"image": ((24, 32, 3), "uint8"), "depth": ((24, 32), "uint16")}


def test_gaps_count_dropped_frames_and_old_frames_are_ignored(softcam):
    cam = softcam()
    source = cam.source()
    framesets = []
    for n in (0, 1, 2, 5, 6):
        cam.inject(n, *plain(n))
    while (frameset := source.wait(100)) is not None:
        if frameset.size() == 2:
            framesets.append(frameset)
    assert [fs.get_color_frame().get_frame_number() for fs in framesets] == [1, 2, 5, 6]
    camera = RealSense(width=16, height=12)
    # the same frameset again and an older one after the newest: both ignored
    got = [camera.process(fs) for fs in framesets + [framesets[3], framesets[1]]]
    assert [r.frame_number if r else None for r in got] == [1, 2, 5, 6, None, None]
    assert [int(r.values["image"][0, 0, 0]) for r in got[:4]] == [1, 2, 5, 6]
    assert camera.counters["dropped_frames"] == 2
    assert camera.counters["stale_frames"] == 2
    assert camera.counters["frames"] == 4


def test_crop_and_resize_give_block_means_and_nearest_depth(softcam, driver):
    # 10 x 10 blocks: colour a per-block value with +-10 alternating per pixel (area mean = the block value),
    # depth a per-block value; block (2, 3) has holes (0) at every other pixel.
    by, bx = np.indices((H, W)) // 10
    checker = np.where((np.indices((H, W)).sum(axis=0)) % 2 == 0, 10, -10)
    base = np.stack([bx * 3 + 20, by * 4 + 20, (bx + by) % 200 + 20], axis=-1)
    colour = (base + checker[..., None]).astype(np.uint8)
    depth = (1000 + by * 64 + bx).astype(np.uint16)
    y, x = np.indices((H, W))
    holes = (by == 2) & (bx == 3) & ((x + y) % 2 == 1)
    depth[holes] = 0
    cam = softcam()
    camera = driver(frame_source=cam.source(), width=64, height=48, align=False, depth_max_mm=4000)
    assert camera.crop == (0, 0, W, H)
    camera.connect()
    for n in range(3):
        cam.inject(n, colour, depth)
    assert wait_until(lambda: camera.counters["frames"] == 2)
    reading = camera.read()
    expected = base[5::10, 5::10]
    np.testing.assert_array_equal(reading.values["image"], expected.astype(np.uint8))
    out_depth = reading.values["depth"]
    # nearest neighbour at the block centre (25, 35): a valid pixel, never half a hole
    assert out_depth[2, 3] == 1000 + 2 * 64 + 3
    np.testing.assert_array_equal(out_depth, np.minimum(1000 + by[5::10, 5::10] * 64 + bx[5::10, 5::10], 4000))


def test_default_crop_is_centred_and_area_average_matches_an_independent_mean():
    camera = RealSense(width=64, height=64)
    assert camera.crop == (80, 0, 560, 480)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    image[:, :80] = 255  # outside the crop: must not leak in
    image[:, 560:] = 255
    out = camera.resize_image(image)
    # 480 -> 64 is 7.5 pixels per output pixel: repeat every pixel twice, then average 15 x 15 blocks.
    box = image[:, 80:560].astype(np.float64).repeat(2, axis=0).repeat(2, axis=1)
    means = box.reshape(64, 15, 64, 15, 3).mean(axis=(1, 3))
    assert np.abs(out.astype(np.float64) - means).max() <= 0.5 + 1e-3
    assert np.allclose(area_weights(10, 4).sum(axis=1), 1.0)


@pytest.mark.parametrize("shift_px", [0, 10])
def test_depth_is_aligned_to_colour(softcam, driver, shift_px):
    # Depth stripes 10 px wide; colour's principal point shifted by shift_px (identity extrinsics, no
    # baseline): the aligned depth is the input moved right by shift_px, i.e. one stripe for 10 px.
    stripes = (1000 + 10 * (np.arange(W) // 10)).astype(np.uint16)
    depth = np.tile(stripes, (H, 1))
    colour = np.zeros((H, W, 3), np.uint8)
    cam = softcam(colour_ppx_shift=float(shift_px))
    aligned = driver(frame_source=cam.source(), width=64, height=48)
    aligned.connect()
    for n in range(3):
        cam.inject(n, colour, depth)
    assert wait_until(lambda: aligned.counters["frames"] == 2)
    out = aligned.read().values["depth"].astype(np.int64)
    expected = np.tile(1000 + 10 * (np.arange(64) - shift_px // 10), (48, 1))
    valid = out > 0
    # librealsense's align leaves a few single-pixel holes (pixel-corner rounding) and the uncovered edge
    assert valid.mean() > 0.9
    np.testing.assert_array_equal(out[valid], expected[valid])
    assert not valid[:, 0].any() if shift_px else valid[:, 0].mean() > 0.5


def test_system_time_domain_warns_once_and_info_says_so(softcam, driver, caplog):
    cam = softcam(serial="SYS42")
    camera = driver(name="wrist", frame_source=cam.source(), width=16, height=12)
    camera.connect()
    with caplog.at_level(logging.WARNING, logger="drivers.real.realsense"):
        for n in range(5):
            cam.inject(n, *plain(n), domain="system_time")
        assert wait_until(lambda: camera.counters["frames"] == 4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "system_time" in r.getMessage()]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "'wrist'" in message and "SYS42" in message and "metadata" in message and "jitter" in message
    reading = camera.read()
    assert reading.domain == "system_time" and reading.hw_time_ns == round(ts_ms(4) * 1_000_000)
    assert camera.info()["timestamp_domain"].startswith("system_time (no hardware timestamps")


def test_no_frames_means_read_raises_and_link_lost(softcam, driver):
    cam = softcam(serial="QUIET7")
    camera = driver(frame_source=cam.source(), frame_timeout_s=0.2)
    assert not camera.status().ok and not camera.status().link_lost  # not connected yet
    camera.connect()
    assert camera.status().ok  # within frame_timeout_s of connect
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"QUIET7.*no frame within frame_timeout_s=0.2"):
        camera.read()
    assert 0.1 < time.monotonic() - t0 < 1.0
    status = camera.status()
    assert not status.ok and status.link_lost and "QUIET7" in status.fault
    # frames arrive: healthy again; they stop: link lost again
    for n in range(3):
        cam.inject(n, *plain(n))
    assert wait_until(lambda: camera.counters["frames"] == 2)
    assert camera.status().ok and camera.read().frame_number == 2
    assert wait_until(lambda: camera.status().link_lost, timeout_s=1.0)
    assert "no frame for" in camera.status().fault
    camera.disconnect()
    camera.disconnect()  # idempotent
    assert not camera.status().ok


def test_serial_not_connected_is_one_line_error():
    connected = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
    camera = make("realsense", serial="000000000001")
    with pytest.raises(RuntimeError) as err:
        camera.connect()
    listed = ", ".join(connected) or "none"
    assert str(err.value) == (f"RealSense 'camera': no device with serial 000000000001 (connected: {listed}): "
                              f"check the cable and camera serial")
    camera.disconnect()


def test_bad_arguments_are_one_line_value_errors(tmp_path):
    for kwargs, fragment in (({"width": 0}, "width = 0 is out of range: allowed 1 to 8192"),
                             ({"fps": 30.5}, "fps = 30.5 is not an integer"),
                             ({"crop": [0, 0, 700, 480]}, "crop = [0, 0, 700, 480] must satisfy 0 <= x0 < x1 <= 640"),
                             ({"crop": (1, 2)}, "crop = [1, 2] must be [x0, y0, x1, y1]"),
                             ({"serial": 12345}, "serial = 12345 is not a string: quote it"),
                             ({"serial": " "}, "serial = ' ' must be the camera's serial number"),
                             ({"depth": "yes"}, "depth = 'yes' is not a boolean: give true or false"),
                             ({"depth_max_mm": 0}, "depth_max_mm = 0 is out of range: allowed 1 to 65535"),
                             ({"frame_timeout_s": -1}, "frame_timeout_s = -1"),
                             ({"frame_timeout_s": 0}, "frame_timeout_s = 0.0 must be above 0"),
                             ({"playback_file": "x.mp4"}, "playback_file = 'x.mp4' must be the path of a .db3 or .bag"),
                             ({"frame_source": object()}, "frame_source"),
                             ({"stream_widht": 640}, "unknown key 'stream_widht': known keys here are align, crop, ")):
        with pytest.raises(ValueError, match="RealSense 'camera'") as err:
            RealSense(**kwargs)
        assert fragment in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RuntimeError, match="does not exist"):
        RealSense(playback_file=str(tmp_path / "missing.db3")).connect()


def test_missing_pyrealsense2_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)
    with pytest.raises(RuntimeError, match=r"pip install 'robotd\[realsense\]'.*libusb-1.0-0"):
        import_rs()


class RecordingRealSense(RealSense):
    """Keeps every reading the frame thread produces."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.readings = []

    def process(self, frameset, host_ns=None):
        reading = super().process(frameset, host_ns)
        if reading is not None:
            self.readings.append(reading)
        return reading


def test_recording_plays_back_through_the_pipeline(tmp_path, softcam):
    path = str(tmp_path / "take.db3")
    cam = softcam(serial="REC9", record_to=path)
    for n in range(10):
        cam.inject(n, *plain(n))
    cam.close()  # stops the sensors and releases the recorder, which writes the file
    camera = RecordingRealSense(playback_file=path, width=32, height=24, frame_timeout_s=0.5)
    try:
        camera.connect()
        assert camera.info()["serial"] == "REC9"
        assert wait_until(lambda: camera.status().link_lost, timeout_s=5.0)
        assert "has ended" in camera.status().fault
    finally:
        camera.disconnect()
    numbers = [r.frame_number for r in camera.readings]
    assert len(numbers) >= 6 and numbers[-1] == 9  # 2.59 drops the first frames of a playback
    assert numbers == list(range(numbers[0], 10))
    assert camera.counters["dropped_frames"] == 0
    for reading in camera.readings:
        n = reading.frame_number
        assert reading.domain == "hardware_clock"
        assert abs(reading.hw_time_ns - ts_ms(n) * 1_000_000) <= 1_000  # stored at microsecond-ish precision
        assert np.all(reading.values["image"] == n) and np.all(reading.values["depth"] == 1000 + n)
