"""The A1's low-level UDP messages on the wire (drivers/real/a1_wire.py): sizes, field offsets, scaling, CRC."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from drivers.real import a1_wire
from drivers.real.a1_wire import A1WireError


def reference_crc32_core(data: bytes) -> int:
    """The CRC as the protocol describes it, bit by bit: for each little-endian word, 32 times: shift the
    register (xoring the polynomial when its top bit was set), then xor the polynomial when the word's
    next bit (most significant first) is set."""
    crc = 0xFFFFFFFF
    for (word,) in struct.iter_unpack("<I", data[: 4 * (len(data) // 4 - 1)]):
        for bit in range(31, -1, -1):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
            crc &= 0xFFFFFFFF
            if (word >> bit) & 1:
                crc ^= 0x04C11DB7
    return crc


def crc32_mpeg2(data: bytes) -> int:
    """The catalogued CRC-32/MPEG-2 (MSB first, init 0xFFFFFFFF, no reflection, no final xor), bytewise."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def test_the_fast_crc_is_the_bitwise_definition():
    rng = np.random.default_rng(0)
    for size in (8, 64, a1_wire.LOW_CMD_SIZE, a1_wire.LOW_STATE_SIZE):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert a1_wire.crc32_core(data) == reference_crc32_core(data)


def test_the_crc_is_crc32_mpeg2_of_the_words_written_big_endian():
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7                     # the catalogue's check value
    words = struct.pack("<II", int.from_bytes(b"1234", "big"), int.from_bytes(b"5678", "big"))
    assert a1_wire.crc32_core(words + bytes(4)) == crc32_mpeg2(b"12345678")


def test_a_command_has_the_wire_layout():
    q = np.linspace(-1.0, 1.0, 12)
    data = a1_wire.encode_low_cmd(q, np.zeros(12), 60.0, 2.0, np.full(12, 1.5))
    assert len(data) == a1_wire.LOW_CMD_SIZE == 610
    assert data[0] == a1_wire.LOWLEVEL
    # Motor 3 (FL hip) at 10 + 3 * 27: mode, q, dq, tau*256, Kp*32, Kd*16.
    mode, q3, dq3, tau3, kp3, kd3 = struct.unpack_from("<BffhHH", data, 10 + 3 * 27)
    assert (mode, tau3, kp3, kd3) == (0x0A, 384, 1920, 32)
    assert q3 == pytest.approx(q[3]) and dq3 == 0.0
    # Slot 12 (unused) is idle with the "do not use" values.
    mode12, q12, dq12 = struct.unpack_from("<Bff", data, 10 + 12 * 27)
    assert mode12 == 0 and q12 == pytest.approx(a1_wire.POS_STOP_F) and dq12 == pytest.approx(a1_wire.VEL_STOP_F)
    assert struct.unpack_from("<I", data, 606)[0] == reference_crc32_core(data)


def test_command_round_trip_with_the_wire_resolution():
    rng = np.random.default_rng(1)
    q, dq = rng.uniform(-2, 2, 12), rng.uniform(-5, 5, 12)
    kp, kd, tau = rng.uniform(0, 100, 12), rng.uniform(0, 5, 12), rng.uniform(-30, 30, 12)
    decoded = a1_wire.decode_low_cmd(a1_wire.encode_low_cmd(q, dq, kp, kd, tau))
    np.testing.assert_allclose(decoded["q"], q, rtol=1e-6)
    np.testing.assert_allclose(decoded["dq"], dq, rtol=1e-6)
    np.testing.assert_allclose(decoded["kp"], kp, atol=0.5 / 32)
    np.testing.assert_allclose(decoded["kd"], kd, atol=0.5 / 16)
    np.testing.assert_allclose(decoded["tau"], tau, atol=0.5 / 256)
    assert decoded["level"] == 0xFF and decoded["mode"].tolist() == [0x0A] * 12


def test_state_round_trip_and_layout():
    q = np.arange(12) * 0.1
    data = a1_wire.encode_low_state(q=q, dq=-q, rpy=(0.1, -0.2, 0.3), gyroscope=(1.0, 2.0, 3.0), tau_est=np.ones(12),
                                    foot_force=(10, 20, 30, 40), tick=123456)
    assert len(data) == a1_wire.LOW_STATE_SIZE == 771
    assert struct.unpack_from("<I", data, 719)[0] == 123456                      # the robot's tick
    assert struct.unpack_from("<4h", data, 703) == (10, 20, 30, 40)             # foot forces
    state = a1_wire.decode_low_state(data)
    np.testing.assert_allclose(state["q"], q, atol=1e-6)
    np.testing.assert_allclose(state["dq"], -q, atol=1e-6)
    np.testing.assert_allclose(state["rpy"], [0.1, -0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose(state["tau_est"], np.ones(12))
    assert state["tick"] == 123456 and state["foot_force"].tolist() == [10, 20, 30, 40]


def test_damaged_or_foreign_datagrams_are_refused_in_one_line():
    data = bytearray(a1_wire.encode_low_state(q=np.zeros(12), dq=np.zeros(12)))
    data[100] ^= 0x01
    with pytest.raises(A1WireError, match=r"^LowState: CRC 0x[0-9a-f]{8} does not match the computed"):
        a1_wire.decode_low_state(bytes(data))
    with pytest.raises(A1WireError, match=r"^LowCmd: 730 bytes, expected 610"):
        a1_wire.decode_low_cmd(bytes(730))
    with pytest.raises(ValueError, match="A1 command q must be 12 finite numbers"):
        a1_wire.encode_low_cmd(np.full(12, np.nan), 0, 0, 0, 0)
    with pytest.raises(ValueError, match="kp and kd must be >= 0"):
        a1_wire.encode_low_cmd(np.zeros(12), 0, -1.0, 0, 0)


def test_idle_command_uses_the_do_not_use_values():
    decoded = a1_wire.decode_low_cmd(a1_wire.idle_low_cmd())
    assert np.all(decoded["q"] == np.float32(a1_wire.POS_STOP_F)) and np.all(decoded["kp"] == 0)
