"""Typed, validated session configuration.

A config is a YAML file loaded into the dataclasses below. Every field declares its type and,
where it matters, its allowed range or choices; loading fails at start with one line that names
the key, the value and what is allowed. ``--set key=value`` overrides any key by its dotted path.
The resolved config (after overrides) is what a session saves in its directory.
"""
from __future__ import annotations

import dataclasses
import math
import hashlib
import os
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drivers.settings import SettingsError, build, setting
from robotd.presets import PRESET_NAMES


class ConfigError(SettingsError):
    """A config value that cannot be used; the message is one line naming key, value and fix."""


spec = setting


@dataclass
class DeviceConfig:
    """One device: a driver name from the driver registry and the keyword arguments it takes."""
    name: str = spec("robot", help="name used in observations and timing records")
    driver: str = spec("mock_arm", help="registered driver name, e.g. mock_arm, mock_legged, mock_camera")
    args: dict = spec(default_factory=dict, help="keyword arguments for the driver")


@dataclass
class ControlConfig:
    """The daemon's fixed-rate loop and what happens when the actor is late or gone."""
    rate_hz: float = spec(20.0, range=(1.0, 1000.0))
    action_deadline_ms: float = spec(30.0, range=(0.1, 1000.0),
                                     help="time after an observation is sent within which the action must arrive")
    fallback: str = spec("hold", choices=("hold", "stop"), help="applied when the action misses its deadline")
    watchdog_s: float = spec(1.0, range=(0.01, 60.0), help="actor silence that brings the robot to a safe stop")
    realtime: str = spec("auto", choices=("auto", "on", "off"), help="SCHED_FIFO for the daemon")
    max_age_ms: float = spec(200.0, range=(1.0, 10000.0), help="older readings count as stale")
    reset_timeout_s: float = spec(10.0, range=(0.1, 600.0))
    pacing: str = spec("realtime", choices=("realtime", "lockstep"),
                       help="realtime: tick every period; lockstep (simulated devices only): step as soon as the "
                            "action arrives, simulated time advancing one period per step")


@dataclass
class ArmSafetyConfig:
    """Arm limits enforced below the policy (joint limits come from the driver unless given)."""
    max_delta_rad: float = spec(0.05, range=(1e-4, 0.5), help="joint target change for action = 1, per step")
    max_joint_vel_rad_s: float = spec(1.0, range=(0.01, 3.2))
    workspace_min_m: list = spec(default_factory=lambda: [-1.0, -1.0, -0.5])
    workspace_max_m: list = spec(default_factory=lambda: [1.0, 1.0, 1.2])
    action_mode: str = spec("joint_delta", choices=("joint_delta", "tcp_delta"),
                            help="joint_delta: dof values move the joint targets; tcp_delta: 3 values move the tool "
                                 "centre point with a Cartesian velocity command, orientation held")
    max_tcp_delta_m: float = spec(0.02, range=(1e-4, 0.2), help="tcp_delta: tool displacement for action = 1, per step")
    max_tcp_speed_m_s: float = spec(0.25, range=(0.001, 1.0), help="tcp_delta: cap on the commanded tool speed")
    gripper: bool = spec(False, help="one more action value: -1 open .. +1 closed (the driver needs a gripper)")


@dataclass
class LeggedSafetyConfig:
    """Legged-robot limits enforced below the policy."""
    action_scale_rad: float = spec(0.3, range=(0.01, 1.5))
    max_delta_rad: float = spec(0.1, range=(1e-3, 1.0))
    kp: float = spec(40.0, range=(0.0, 200.0))
    kd: float = spec(1.0, range=(0.0, 10.0))
    kp_max: float = spec(100.0, range=(0.01, 500.0))
    kd_max: float = spec(5.0, range=(0.01, 50.0))
    tau_max_nm: float = spec(33.5, range=(0.01, 60.0))
    max_tilt_rad: float = spec(0.8, range=(0.05, math.pi),
                               help="|roll| or |pitch| beyond this damps the motors; pi disables fall damping "
                                    "(reset-free learning from falls, e.g. learning to roll over)")
    action_filter: float = spec(1.0, range=(0.01, 1.0),
                                help="weight of the new joint target per step (first-order low-pass, 1 = no filtering)")


@dataclass
class SafetyConfig:
    """Safety limits for every robot kind; only the section of the configured kind is used."""
    arm: ArmSafetyConfig = spec(default_factory=ArmSafetyConfig)
    legged: LeggedSafetyConfig = spec(default_factory=LeggedSafetyConfig)


@dataclass
class TaskConfig:
    """Which task defines observations, reward and episode ends."""
    name: str = spec("mock_reach", help="registered task name")
    episode_steps: int = spec(200, range=(2, 10_000_000))
    args: dict = spec(default_factory=dict, help="task-specific keyword arguments")


@dataclass
class QualityConfig:
    """Bounds on an episode's timing quality: an episode outside them is flagged when it is written and kept out
    of offline training and replay refills (``robotd replay --include-flagged`` takes it anyway)."""
    max_period_p99_factor: float = spec(2.0, range=(1.0, 1000.0),
                                        help="p99 control period at most this many target periods")
    max_late_fraction: float = spec(0.1, range=(0.0, 1.0), help="steps whose action came after the deadline")
    max_stale_fraction: float = spec(0.1, range=(0.0, 1.0), help="steps with a stale reading, per device")
    max_dropped_frame_fraction: float = spec(0.1, range=(0.0, 1.0),
                                             help="camera frames lost (frame-number gaps) per step, per camera")
    exclude_protective_stops: bool = spec(False, help="flag episodes that ended in a protective stop too")


@dataclass
class ActorConfig:
    """The policy process on the robot PC."""
    prefill_steps: int = spec(200, range=(0, 10_000_000), help="random-policy steps before the network acts")
    chunk_steps: int = spec(32, range=(1, 4096), help="steps per experience chunk")
    spool_memory_chunks: int = spec(256, range=(1, 1_000_000), help="unacked chunks kept in memory before spilling to disk")
    resend_after_s: float = spec(2.0, range=(0.05, 600.0),
                                 help="resend an unacked chunk after this long (doubling per resend, at most 30 s)")
    spool_max_mb: float = spec(4096.0, range=(1.0, 10_000_000.0),
                               help="disk for unacknowledged chunks while the learner is away, in MiB")
    spool_full: str = spec("stop", choices=("stop", "drop_oldest"),
                           help="when spool_max_mb is reached: stop collecting (the session ends; nothing is lost) "
                                "or drop the oldest spilled chunks (they stay in the episode files)")
    drain_timeout_s: float = spec(10.0, range=(0.0, 600.0), help="at exit, wait this long for the learner to ack")
    threads: int = spec(1, range=(1, 64))
    daemon_timeout_s: float = spec(10.0, range=(0.1, 600.0), help="how long to wait for the daemon's hello")



LEARNER_PROFILES: dict[str, dict] = {
    # The small-compute setting: learns simulated tasks on a 2-core CPU within minutes (chosen from the measured
    # sweep in benchmarks/small_cpu/). The model preset "small" carries the sizes, learning rate and warm-up.
    "small_cpu": {"model": {"preset": "small"}, "batch_size": 16, "batch_length": 32, "train_ratio": 256,
                  "threads": 0},
}
"""Named learner settings: ``learner.profile: NAME`` fills these learner keys; keys the config file or ``--set``
gives itself win. The paper's settings for GPU learners are the plain defaults with a paper model preset."""


@dataclass
class ModelSection:
    """World-model size: a preset name plus per-dimension overrides."""
    preset: str = spec("tiny", choices=PRESET_NAMES,
                       help="tiny for tests and CPU demos; the paper's sizes 1m .. 400m")
    overrides: dict = spec(default_factory=dict, help="ModelConfig fields to override, e.g. {deter: 128}")


@dataclass
class LearnerConfig:
    """The training process (Ray replay, ingest, trainer, weight publisher)."""
    profile: str = spec("", choices=("", *LEARNER_PROFILES),
                        help="a named learner setting (small_cpu: learns on a 2-core CPU) filling the learner keys "
                             "this config does not give; empty: the plain defaults")
    model: ModelSection = spec(default_factory=ModelSection)
    batch_size: int = spec(8, range=(1, 4096))
    batch_length: int = spec(32, range=(2, 4096))
    min_replay_steps: int = spec(100, range=(1, 100_000_000), help="steps in replay before training starts")
    replay_capacity_steps: int = spec(1_000_000, range=(100, 1_000_000_000))
    history_from_actors: bool = spec(True, help="ask an actor whose steps this learner holds none of (a learner "
                                                "started again on a machine without the robot's episodes) to send "
                                                "its logged history, up to learner.replay_capacity_steps")
    replay_shards: int = spec(1, range=(1, 64),
                              help="Ray actors the replay is split over, sharing learner.replay_capacity_steps "
                                   "equally: a stream's chunks all go to one, several streams spread over them, "
                                   "and batches are drawn uniformly over the data of all of them")
    replay_node_resources: list[str] = spec(default_factory=list,
                                            help="per replay shard, a custom Ray resource its actor asks a sliver "
                                                 "of, so Ray places it on a node declaring it (ray start "
                                                 "--resources='{\"replay_a\": 1}'); empty: anywhere. With "
                                                 "learner.replay_in_learner, names for shards 1.. only")
    replay_in_learner: bool = spec(False, help="keep replay shard 0 in the learner's own process instead of a Ray "
                                               "actor: chunks stored and batches drawn there skip Ray's "
                                               "serialisation and object store (the fastest ingest on one "
                                               "machine); other shards stay Ray actors; not with "
                                               "learner.data_parallel_ranks > 1")
    data_parallel_ranks: int = spec(1, range=(1, 64),
                                    help="ranks training the agent together on this node, each on its own batches "
                                         "(one GPU each on CUDA, gloo on CPU), gradients averaged every update; "
                                         "rank 0 publishes and checkpoints")
    train_ratio: float = spec(0.0, range=(0.0, 100_000.0),
                              help="replayed steps per step collected after min_replay_steps; "
                                   "0 trains as fast as possible")
    publish_every_updates: int = spec(10, range=(1, 1_000_000))
    checkpoint_every_s: float = spec(120.0, range=(1.0, 1e6))
    report_every_s: float = spec(300.0, range=(0.0, 1e6),
                                 help="world-model report (losses, open-loop video) period; 0 disables it")
    threads: int = spec(0, range=(0, 256),
                        help="torch threads; 0 = auto: every core when lockstep pacing holds the simulation for "
                             "the learner (learner.train_ratio > 0), else 1 so a real robot's daemon keeps a core")
    device: str = spec("auto", choices=("auto", "cpu", "cuda"))
    init_checkpoint: str = spec("", help="start from this checkpoint (e.g. one robotd replay wrote) when the "
                                         "session has none of its own; robotd train --init PATH sets it")
    ray_address: str = spec("", help="empty starts Ray locally, listening on 127.0.0.1 only; 'auto', host:port "
                                     "or ray://host:port joins a cluster, always with Ray's token auth")
    ray_token_file: str = spec("", help="file holding the Ray cluster's auth token, readable by its owner only "
                                        "(chmod 600), for a learner.ray_address; empty: RAY_AUTH_TOKEN, "
                                        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
    ray_start_timeout_s: float = spec(120.0, range=(10.0, 3600.0),
                                      help="how long the learner keeps trying to start or join Ray, retrying "
                                           "failed attempts, before it gives up")


@dataclass
class NetworkConfig:
    """Addresses of the channels; ``robotd train`` picks free loopback ports for port 0."""
    control: str = spec("tcp://127.0.0.1:5560", help="daemon <-> actor")
    experience: str = spec("tcp://127.0.0.1:5555", help="actor -> learner chunks")
    weights: str = spec("tcp://127.0.0.1:5556", help="learner -> actor weights")
    status: str = spec("", help="status collector of robotd train; empty disables status publishing")
    max_message_mb: float = spec(64.0, range=(0.01, 4096.0))
    auth: str = spec("auto", choices=("auto", "always", "never"),
                     help="CurveZMQ on the experience and weights channels: auto = when they leave this machine")
    keys_dir: str = spec("", help="key directory made by `robotd keys DIR`")
    actor_key: str = spec("actor", help="this actor's key name in keys_dir")


@dataclass
class Config:
    """A whole session: robot, cameras, control loop, safety, task, actor, learner, network."""
    robot: DeviceConfig = spec(default_factory=DeviceConfig)
    cameras: list[DeviceConfig] = spec(default_factory=list)
    control: ControlConfig = spec(default_factory=ControlConfig)
    safety: SafetyConfig = spec(default_factory=SafetyConfig)
    task: TaskConfig = spec(default_factory=TaskConfig)
    actor: ActorConfig = spec(default_factory=ActorConfig)
    quality: QualityConfig = spec(default_factory=QualityConfig)
    learner: LearnerConfig = spec(default_factory=LearnerConfig)
    network: NetworkConfig = spec(default_factory=NetworkConfig)
    seed: int = spec(0, range=(0, 2**31 - 1))
    session: str = spec("", help="session name; empty takes the log directory's name")

    def learner_threads(self) -> int:
        """The learner's torch threads: ``learner.threads``, or for 0 (auto) every core of this machine when the
        simulation waits for the learner (lockstep with a train ratio: nothing else needs the cores then), else 1."""
        if self.learner.threads > 0:
            return self.learner.threads
        if self.control.pacing == "lockstep" and self.learner.train_ratio > 0:
            return available_cores()
        return 1

    def to_dict(self) -> dict:
        """Plain nested dict (what YAML and the session directory store)."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of what processes must agree on (robot, cameras, task, model)."""
        keyed = {k: self.to_dict()[k] for k in ("robot", "cameras", "task")}
        keyed["model"] = dataclasses.asdict(self.learner.model)
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _build(cls, data: dict, prefix: str = ""):
    return build(cls, data, prefix=prefix, owner="config", error=ConfigError)


def from_dict(data: dict) -> Config:
    """Builds and validates a Config from a nested dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: top level is {type(data).__name__}, not a mapping: the file must be a YAML mapping")
    config = _build(Config, data)
    _check_cross_field(config)
    return config


def _check_cross_field(config: Config) -> None:
    period_ms = 1000.0 / config.control.rate_hz
    if config.control.action_deadline_ms >= period_ms:
        raise ConfigError(
            f"config: control.action_deadline_ms = {config.control.action_deadline_ms} is not below the control period "
            f"{period_ms:.3g} ms at control.rate_hz = {config.control.rate_hz}: lower the deadline or the rate")
    for axis, (lo, hi) in enumerate(zip(config.safety.arm.workspace_min_m, config.safety.arm.workspace_max_m)):
        if lo >= hi:
            raise ConfigError(f"config: safety.arm.workspace_min_m[{axis}] = {lo} is not below workspace_max_m[{axis}] = {hi}: fix the box")
    check_replay_shards(config.learner)
    names = [config.robot.name] + [c.name for c in config.cameras]
    if len(set(names)) != len(names):
        raise ConfigError(f"config: device names {names} repeat: give every robot and camera its own name")
    check_drivers(config)
    check_task(config)
    if config.control.pacing == "lockstep":
        check_lockstep(config)


RAY_RESERVED_RESOURCES = ("CPU", "GPU", "TPU", "memory", "object_store_memory")


def check_replay_shards(learner: LearnerConfig) -> None:
    """learner.replay_node_resources names one usable resource per shard (or none), and every shard gets at least
    the smallest replay capacity; else one line."""
    shards, names = learner.replay_shards, learner.replay_node_resources
    if learner.replay_in_learner:
        if learner.data_parallel_ranks > 1:
            raise ConfigError(f"config: learner.replay_in_learner = true with learner.data_parallel_ranks = "
                              f"{learner.data_parallel_ranks}: the other ranks reach replay through Ray and cannot "
                              f"sample a shard inside the learner's process; turn one of them off")
        if names and len(names) != shards - 1:
            raise ConfigError(f"config: learner.replay_node_resources = {names!r} has {len(names)} name(s) for the "
                              f"{shards - 1} replay shard actor(s) beside the learner's own shard "
                              f"(learner.replay_in_learner = true, learner.replay_shards = {shards}): give one per "
                              f"shard from shard 1 on, or none")
    elif names and len(names) != shards:
        raise ConfigError(f"config: learner.replay_node_resources = {names!r} has {len(names)} name(s) for "
                          f"learner.replay_shards = {shards}: give one per shard, or none")
    for index, name in enumerate(names):
        if not name.strip() or name in RAY_RESERVED_RESOURCES or name.startswith(("node:", "accelerator_type:")):
            raise ConfigError(f"config: learner.replay_node_resources[{index}] = {name!r} is not a custom Ray "
                              f"resource name: give the name a node declares with ray start --resources")
    if learner.replay_capacity_steps < 100 * shards:
        raise ConfigError(f"config: learner.replay_capacity_steps = {learner.replay_capacity_steps} leaves fewer than "
                          f"100 steps to each of learner.replay_shards = {shards}: raise the capacity or use fewer "
                          f"shards")


def _devices(config: Config) -> list[tuple[str, DeviceConfig]]:
    """(where in the config, device) for the robot and every camera."""
    return [("robot", config.robot)] + [(f"cameras[{i}]", c) for i, c in enumerate(config.cameras)]


def check_drivers(config: Config) -> None:
    """Every device names a registered driver and gives it arguments its ``Args`` takes; else one line naming
    the driver or argument and what is known or allowed."""
    from drivers import registry        # importing the package registers every driver
    for where, device in _devices(config):
        problem = registry.unknown_driver(device.driver)
        if problem is not None:
            raise ConfigError(f"config: {where}.driver = {problem}")
    for where, device in _devices(config):
        registry.check_args(device.driver, device.args, f"{where}.args", ConfigError)


def check_task(config: Config) -> None:
    """The task is a registered one and its ``task.args`` are what its ``Args`` takes; else one line."""
    from robotd import tasks            # importing the package registers every task (no torch)
    if config.task.name not in tasks.names():
        raise ConfigError(f"config: task.name = {config.task.name!r} is not a known task: choose one of "
                          f"{', '.join(tasks.names())}")
    tasks.check_args(config.task.name, config.task.args, "task.args", ConfigError)


def non_simulated_device(config: Config) -> str | None:
    """``"<where>.driver = '<name>'"`` for the first robot or camera that is not a simulated driver, else None."""
    from drivers import registry        # every driver registered; each declares whether it is simulated
    for where, device in _devices(config):
        if not registry.is_simulated(device.driver):
            return f"{where}.driver = {device.driver!r}"
    return None


def check_lockstep(config: Config) -> None:
    """Lockstep pacing only for sessions whose robot and cameras are all simulated drivers (an unknown driver is
    named as such first)."""
    check_drivers(config)
    device = non_simulated_device(config)
    if device is not None:
        raise ConfigError(
            f"config: control.pacing = 'lockstep' but {device} is not a simulated driver: lockstep only drives "
            f"simulated devices (gym, mock_*, sim_*); use control.pacing=realtime for real hardware")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} has no '=': write --set key.path=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"--set {text!r} has an empty key: write --set key.path=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.__class__.__name__}): quote it") from None
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Sets ``value`` at ``path`` in a nested dict; list items are addressed by index (cameras.0.args.fps)."""
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set: {where} is not an item of a list of {len(node)}: use an index below {len(node)}")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set: {'.'.join(path)} is not an item of a list of {len(node)}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set: {'.'.join(path[:-1])} is a value, not a section: check the key path")


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Loads a YAML config, applies ``key=value`` overrides, validates, and returns the Config."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = _read_yaml(path)
    parsed = [parse_override(text) for text in overrides]
    base = Config().to_dict()
    profile = _profile_name(data, parsed)
    if profile:
        _deep_merge(base["learner"], LEARNER_PROFILES[profile], "learner")
    _deep_merge(base, data, "")
    for key_path, value in parsed:
        apply_override(base, key_path, value)
    return from_dict(base)


NOT_TEXT = "give a YAML config (a text file such as configs/mock_arm.yaml)"


def _read_yaml(path: Path) -> dict:
    """The mapping a YAML config file holds; a file that cannot be read, is not UTF-8 text, is not valid YAML
    or holds no mapping fails with one line naming it."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory: give a YAML config file, e.g. "
                          f"configs/mock_arm.yaml") from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"config file {str(path)!r} cannot be read ({why}): check the path and its "
                          f"permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not a text YAML file (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start} is not UTF-8): {NOT_TEXT}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:           # a control character such as NUL: binary data
        offset = len(text[:exc.position].encode("utf-8"))
        what = f"byte 0x{exc.character:02x}" if exc.character < 0x80 else f"character U+{exc.character:04X}"
        raise ConfigError(f"config file {str(path)!r} is not a text YAML file ({what} at offset {offset} is a "
                          f"control character): {NOT_TEXT}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} holds a YAML {type(data).__name__}, not a mapping of config "
                          f"sections: {NOT_TEXT}")
    return data


def _profile_name(data: dict, parsed: list[tuple[list[str], Any]]) -> str:
    """The learner profile the file and overrides ask for ('' for none); an unknown name fails in one line."""
    learner = data.get("learner") if isinstance(data, dict) else None
    name = learner.get("profile", "") if isinstance(learner, dict) else ""
    for key_path, value in parsed:
        if key_path == ["learner", "profile"]:
            name = value
        elif key_path == ["learner"] and isinstance(value, dict) and "profile" in value:
            name = value["profile"]
    if name in ("", None):
        return ""
    if name not in LEARNER_PROFILES:
        raise ConfigError(f"config: learner.profile = {name!r} is not allowed: choose one of "
                          f"{', '.join(LEARNER_PROFILES)} (or leave it empty)")
    return name


def _deep_merge(base: dict, update: dict, prefix: str) -> None:
    if not isinstance(update, dict):
        raise ConfigError(f"config: {prefix or 'top level'} = {update!r} is not a mapping: write a YAML mapping")
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("args", "overrides"):
            _deep_merge(base[key], value, f"{prefix}.{key}" if prefix else key)
        else:
            base[key] = value


def save(config: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
