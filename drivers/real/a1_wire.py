"""The Unitree A1's low-level UDP messages as they travel on the wire (legged SDK 3.3.x), and their CRC.

Layout facts (../shared/PROTOCOLS.md): little-endian and packed; a command (LowCmd) is 610 bytes,
a state (LowState) 771 bytes, not the sizes of the SDK header's structs. Both start with a
10-byte header (levelFlag u8, commVersion u16, robotID u16, SN u32, bandWidth u8) and end with a
CRC over the first ``len // 4 - 1`` little-endian 32-bit words, stored little-endian in the last
4 bytes. There are 20 motor slots; slots 0-11 are FR, FL, RR, RL x (hip, thigh, calf).

The CRC is Unitree's "crc32_core": polynomial 0x04C11DB7, initial 0xFFFFFFFF, each 32-bit word
fed most significant bit first, no reflection, no final xor. Feeding a word's bits and xoring the
polynomial in after the shift is the same as the usual MSB-first CRC, so this is CRC-32/MPEG-2 of
the words written big-endian; it is computed with zlib's CRC-32 (the same CRC reflected) over
bit-reversed bytes, its result bit-reversed back and its final xor undone.

Nothing here touches a socket: the A1 driver and its fake peer both use these codecs.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

LOW_CMD_SIZE = 610
LOW_STATE_SIZE = 771
LOWLEVEL = 0xFF
HIGHLEVEL = 0x00
N_SLOTS = 20
N_MOTORS = 12
POS_STOP_F = 2.146e9  # "do not use this q"
VEL_STOP_F = 16000.0  # "do not use this dq"
MODE_SERVO = 0x0A
MODE_IDLE = 0x00
TAU_SCALE = 256.0  # tau travels as int16 of tau * 256
KP_SCALE = 32.0  # Kp as uint16 of Kp * 32
KD_SCALE = 16.0  # Kd as uint16 of Kd * 16 (to be confirmed on a real A1)

_HEADER = struct.Struct("<BHHIB")  # 10 bytes
_CMD_MOTOR_U = struct.Struct("<BffhHH12x")  # mode, q, dq, tau*256, Kp*32, Kd*16, 12 reserved = 27 bytes
_CMD_MOTORS_AT = 10
_CMD_CRC_AT = 606
_IMU = struct.Struct("<4f3f3f3fb")  # quaternion wxyz, gyroscope, accelerometer, rpy, temperature = 53 bytes
_IMU_AT = 10
_STATE_MOTOR = struct.Struct("<Bffhhffhb8x")  # mode, q, dq, ddq, tauEst*256, q_raw, dq_raw, ddq_raw, temp = 32
_STATE_MOTORS_AT = 63
_FEET = struct.Struct("<4h4hI")  # footForce, footForceEst, tick = 20 bytes
_FEET_AT = 703
_STATE_CRC_AT = 767

assert _HEADER.size == 10 and _CMD_MOTOR_U.size == 27 and _IMU.size == 53 and _STATE_MOTOR.size == 32


class A1WireError(ValueError):
    """A datagram that is not a well-formed A1 message (wrong size, bad CRC, wrong level)."""


# Bit-reversal of every byte value: CRC-32/MPEG-2 is the reflected CRC-32 that zlib computes in C, run over
# bit-reversed bytes, with its result bit-reversed and its final xor undone.
_REVERSED_BYTES = bytes(int(f"{value:08b}"[::-1], 2) for value in range(256))


def _reflect32(value: int) -> int:
    return int(f"{value:032b}"[::-1], 2)


def crc32_core(data: bytes | bytearray | memoryview) -> int:
    """Unitree's crc32_core over the first ``len(data) // 4 - 1`` little-endian words of a message."""
    n_words = len(data) // 4 - 1
    if n_words < 0:
        raise A1WireError(f"crc32_core: {len(data)} bytes is shorter than one word; pass a whole message")
    # Each word is fed most significant byte first, i.e. its big-endian bytes.
    big_endian = np.frombuffer(bytes(data[: 4 * n_words]), dtype="<u4").astype(">u4").tobytes()
    return _reflect32(zlib.crc32(big_endian.translate(_REVERSED_BYTES)) ^ 0xFFFFFFFF)


def _check(data: bytes | bytearray | memoryview, size: int, crc_at: int, what: str) -> None:
    if len(data) != size:
        raise A1WireError(f"{what}: {len(data)} bytes, expected {size}: not an A1 low-level {what} "
                          f"(check the SDK version and levelFlag)")
    stored = struct.unpack_from("<I", data, crc_at)[0]
    computed = crc32_core(data)
    if stored != computed:
        raise A1WireError(f"{what}: CRC {stored:#010x} does not match the computed {computed:#010x}: "
                          f"the datagram was damaged or is not from an A1")


def _motor_array(what: str, value, default: float) -> np.ndarray:
    array = np.full(N_MOTORS, default, dtype=np.float64) if value is None else np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(N_MOTORS, float(array))
    if array.shape != (N_MOTORS,) or not np.all(np.isfinite(array)):
        raise ValueError(f"A1 command {what} must be {N_MOTORS} finite numbers, got {np.asarray(value).tolist()}")
    return array


def _scaled(values: np.ndarray, scale: float, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.rint(values * scale), lo, hi).astype(np.int64)


def encode_low_cmd(q, dq, kp, kd, tau, *, mode: int = MODE_SERVO, level: int = LOWLEVEL,
                   comm_version: int = 0, robot_id: int = 0, sn: int = 0, bandwidth: int = 0) -> bytes:
    """A 610-byte command: motors 0-11 get (q, dq, kp, kd, tau) in ``mode``; slots 12-19 stay idle."""
    q = _motor_array("q", q, POS_STOP_F)
    dq = _motor_array("dq", dq, VEL_STOP_F)
    kp = _motor_array("kp", kp, 0.0)
    kd = _motor_array("kd", kd, 0.0)
    tau = _motor_array("tau", tau, 0.0)
    if np.any(kp < 0) or np.any(kd < 0):
        raise ValueError(f"A1 command kp and kd must be >= 0, got kp={kp.tolist()} kd={kd.tolist()}")
    tau_i = _scaled(tau, TAU_SCALE, -32768, 32767)
    kp_u = _scaled(kp, KP_SCALE, 0, 65535)
    kd_u = _scaled(kd, KD_SCALE, 0, 65535)
    buffer = bytearray(LOW_CMD_SIZE)
    _HEADER.pack_into(buffer, 0, level, comm_version, robot_id, sn, bandwidth)
    for slot in range(N_SLOTS):
        offset = _CMD_MOTORS_AT + slot * _CMD_MOTOR_U.size
        if slot < N_MOTORS:
            _CMD_MOTOR_U.pack_into(buffer, offset, mode, q[slot], dq[slot], int(tau_i[slot]), int(kp_u[slot]),
                                   int(kd_u[slot]))
        else:
            _CMD_MOTOR_U.pack_into(buffer, offset, MODE_IDLE, POS_STOP_F, VEL_STOP_F, 0, 0, 0)
    struct.pack_into("<I", buffer, _CMD_CRC_AT, crc32_core(buffer))
    return bytes(buffer)


def idle_low_cmd() -> bytes:
    """The idle command: every motor in servo mode with the "do not use" q and dq and zero gains."""
    return encode_low_cmd(None, None, 0.0, 0.0, 0.0)


def decode_low_cmd(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray | int]:
    """A command's fields for motors 0-11 (q, dq, kp, kd, tau as float64, mode), and its header."""
    _check(data, LOW_CMD_SIZE, _CMD_CRC_AT, "LowCmd")
    level, comm_version, robot_id, sn, bandwidth = _HEADER.unpack_from(data, 0)
    rows = [_CMD_MOTOR_U.unpack_from(data, _CMD_MOTORS_AT + slot * _CMD_MOTOR_U.size) for slot in range(N_MOTORS)]
    mode, q, dq, tau, kp, kd = (np.array(column) for column in zip(*rows))
    return {"level": level, "comm_version": comm_version, "robot_id": robot_id, "sn": sn, "bandwidth": bandwidth,
            "mode": mode.astype(np.int64), "q": q.astype(np.float64), "dq": dq.astype(np.float64),
            "tau": tau / TAU_SCALE, "kp": kp / KP_SCALE, "kd": kd / KD_SCALE}


def encode_low_state(*, q, dq, quaternion=(1.0, 0.0, 0.0, 0.0), gyroscope=(0.0, 0.0, 0.0),
                     accelerometer=(0.0, 0.0, 9.81), rpy=(0.0, 0.0, 0.0), temperature: int = 30,
                     tau_est=None, foot_force=(0, 0, 0, 0), foot_force_est=(0, 0, 0, 0), tick: int = 0,
                     level: int = LOWLEVEL, mode: int = MODE_SERVO) -> bytes:
    """A 771-byte state as the robot sends it (what a fake A1 replies with)."""
    q = _motor_array("q", q, 0.0)
    dq = _motor_array("dq", dq, 0.0)
    tau_est = _motor_array("tau_est", tau_est, 0.0)
    buffer = bytearray(LOW_STATE_SIZE)
    _HEADER.pack_into(buffer, 0, level, 0, 0, 0, 0)
    _IMU.pack_into(buffer, _IMU_AT, *map(float, quaternion), *map(float, gyroscope), *map(float, accelerometer),
                   *map(float, rpy), int(temperature))
    tau_i = _scaled(tau_est, TAU_SCALE, -32768, 32767)
    for slot in range(N_SLOTS):
        offset = _STATE_MOTORS_AT + slot * _STATE_MOTOR.size
        if slot < N_MOTORS:
            _STATE_MOTOR.pack_into(buffer, offset, mode, q[slot], dq[slot], 0, int(tau_i[slot]), q[slot], dq[slot],
                                   0, int(temperature))
        else:
            _STATE_MOTOR.pack_into(buffer, offset, MODE_IDLE, 0.0, 0.0, 0, 0, 0.0, 0.0, 0, 0)
    _FEET.pack_into(buffer, _FEET_AT, *map(int, foot_force), *map(int, foot_force_est), int(tick) & 0xFFFFFFFF)
    struct.pack_into("<I", buffer, _STATE_CRC_AT, crc32_core(buffer))
    return bytes(buffer)


def decode_low_state(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray | int]:
    """A state's IMU, motors 0-11, feet and robot tick; raises A1WireError on a wrong size or CRC."""
    _check(data, LOW_STATE_SIZE, _STATE_CRC_AT, "LowState")
    level = _HEADER.unpack_from(data, 0)[0]
    imu = _IMU.unpack_from(data, _IMU_AT)
    rows = [_STATE_MOTOR.unpack_from(data, _STATE_MOTORS_AT + slot * _STATE_MOTOR.size) for slot in range(N_MOTORS)]
    mode, q, dq, ddq, tau_est = (np.array(column) for column in list(zip(*rows))[:5])
    feet = _FEET.unpack_from(data, _FEET_AT)
    return {"level": level, "quaternion": np.array(imu[0:4]), "gyroscope": np.array(imu[4:7]),
            "accelerometer": np.array(imu[7:10]), "rpy": np.array(imu[10:13]), "temperature": int(imu[13]),
            "mode": mode.astype(np.int64), "q": q.astype(np.float64), "dq": dq.astype(np.float64),
            "ddq": ddq.astype(np.float64), "tau_est": tau_est / TAU_SCALE,
            "foot_force": np.array(feet[0:4]), "foot_force_est": np.array(feet[4:8]), "tick": int(feet[8])}
