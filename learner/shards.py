"""Replay sharded over several Ray actors (``learner.replay_shards``), which may live on different nodes.

Each shard is a :class:`learner.replay.ReplayBuffer` in its own Ray actor, holding an equal part of
``learner.replay_capacity_steps``. A robot's streams (``ACTOR/STREAM``: every stream of one actor id, the
streams of its restarts included) all go to one shard, so a stream's steps stay contiguous there: an actor seen
for the first time goes to the shard holding the fewest actors (among equals, the one a CRC-32 of its id picks,
so the choice is the same in every run) and stays there. Robots so spread evenly over the shards whatever their
names (CRC-32 alone puts robot0, robot1, robot2 and robot3 all in shard 0 of 2), a restarted actor's new stream
joins its old ones instead of unbalancing the shards, and the shards store in parallel what the ingest sends. Sampling stays uniform over every sequence of every shard: the batch is split over the shards by a multinomial draw weighted by each shard's number of
sampleable sequences, the shards sample their parts in parallel, and the parts are concatenated and shuffled.

Placement: ``learner.replay_node_resources`` names, per shard, a custom Ray resource that the shard's actor
asks a sliver of (``RESOURCE_SHARE``); Ray then places it on a node that declares that resource (``ray start
--resources='{"replay_a": 1}'`` on that node). Names survive restarts and are written once in the config, where
node ids (NodeAffinitySchedulingStrategy) change with every Ray start and cannot be.

Replay keys (``sample(..., context=True)``): a shard's keys are (segment id, first step); the shard's index
is added above bit ``SHARD_BIT`` of the segment id, so :meth:`ShardedReplay.update_latents` sends every row
back to the shard it came from. Shard 0's keys, and so all keys with one shard, are the replay's own.
With one shard every call goes straight to the one actor: the learner behaves exactly as with a bare replay.

In the learner's process (``learner.replay_in_learner``): shard 0 is then a ReplayBuffer of the learner's own
process behind a lock, not a Ray actor, so the chunks stored there and the batches drawn from it skip Ray's
serialisation, object store and reply (a 401 kB chunk: about 0.3 ms in process against 1-4 ms through an actor on
a busy 2-core machine; scripts/bench_fleet.py measures both). The other shards stay Ray actors. The learner's
other data-parallel ranks cannot reach such a shard, so the two do not go together (robotd.config refuses it).
"""
from __future__ import annotations

import threading
import zlib

import numpy as np

from learner.replay import ReplayBuffer

__all__ = ["InProcessShard", "RESOURCE_SHARE", "SHARD_BIT", "ShardedReplay", "actor_of", "shard_capacities",
           "shard_of"]

SHARD_BIT = 40                       # segment ids of one shard stay far below 2**40
RESOURCE_SHARE = 0.01                # of a node's custom resource, per shard placed there
ACTOR_CPUS = 0.25                    # Ray CPUs per shard actor (copies on add, gathers on sample)


def shard_of(stream: str, shards: int) -> int:
    """The shard a name prefers: stable across processes and runs (Python's hash() is not). ShardedReplay puts a
    new actor there when no shard holds fewer actors."""
    return zlib.crc32(stream.encode("utf-8")) % shards if shards > 1 else 0


def actor_of(stream: str) -> str:
    """The actor id of a replay stream name ``ACTOR/STREAM`` (a name without "/" is its own actor)."""
    return stream.rsplit("/", 1)[0]


def shard_capacities(capacity_steps: int, shards: int) -> list[int]:
    """``capacity_steps`` split over ``shards`` (the first ones take the remainder); sums to ``capacity_steps``."""
    base, extra = divmod(capacity_steps, shards)
    return [base + (1 if index < extra else 0) for index in range(shards)]


def check_placement(node_resources: list[str], declared: dict, first_shard: int = 0) -> None:
    """Every named resource is declared by some node of the cluster (else the shard's actor would wait for ever);
    a ConfigError of one line otherwise."""
    from robotd.config import ConfigError
    for index, name in enumerate(node_resources):
        if declared.get(name, 0) < RESOURCE_SHARE:
            known = sorted(key for key in declared if key not in ("CPU", "GPU", "memory", "object_store_memory")
                           and not key.startswith(("node:", "accelerator_type:")))
            raise ConfigError(
                f"config: learner.replay_node_resources[{index}] = {name!r} is declared by no node of this Ray "
                f"cluster (custom resources: {', '.join(known) or 'none'}): start the node meant for replay shard "
                f"{index + first_shard} with ray start --resources='{{\"{name}\": 1}}', or leave learner.replay_node_resources "
                f"empty")


class InProcessShard:
    """A ReplayBuffer of this process standing in for a shard's Ray actor: its methods run at once, under a lock
    (the ingest thread adds while the prefetch thread samples and the trainer writes latents back)."""

    def __init__(self, capacity_steps: int, seed: int = 0):
        self.buffer = ReplayBuffer(capacity_steps, seed)
        self.lock = threading.Lock()

    def call(self, method: str, *args):
        with self.lock:
            return getattr(self.buffer, method)(*args)


class _Done:
    """The result of a call an InProcessShard ran already, where a Ray actor gives an ObjectRef."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class ShardedReplay:
    """K replay actors behind the interface the learner uses: add, exclude, can_sample, sample, update_latents,
    stats. Thread-safe (the ingest thread adds, the prefetch thread samples, the trainer writes latents back)."""

    def __init__(self, ray, shards: list, seed: int = 0):
        self.ray = ray
        self.shards = list(shards)
        self.rng = np.random.default_rng([seed, len(self.shards)])
        self._lock = threading.Lock()
        self._placed: dict[str, int] = {}            # actor id -> its shard, from its first chunk on
        self._actors_per_shard = [0] * len(self.shards)

    @classmethod
    def create(cls, ray, capacity_steps: int, seed: int = 0, shards: int = 1,
               node_resources: list[str] | tuple = (), in_learner: bool = False) -> "ShardedReplay":
        """Starts ``shards`` replay actors sharing ``capacity_steps``, shard i on a node declaring
        ``node_resources[i]`` when given (checked first: see :func:`check_placement`). With ``in_learner`` shard 0
        is an :class:`InProcessShard` of this process and ``node_resources`` names shards 1.. only."""
        actor_shards = shards - 1 if in_learner else shards
        if node_resources:
            if len(node_resources) != actor_shards:
                raise ValueError(f"{len(node_resources)} node resources for {actor_shards} replay shard actors")
            check_placement(list(node_resources), ray.cluster_resources(), first_shard=1 if in_learner else 0)
        placed = ([None] if in_learner else []) + list(node_resources or [None] * actor_shards)
        members = []
        for index, capacity in enumerate(shard_capacities(capacity_steps, shards)):
            if in_learner and index == 0:
                members.append(InProcessShard(capacity, seed))
                continue
            # Without task events: Ray's GCS would otherwise keep a record of every replay call (several a second)
            # and grow through a long session (about 100 MB in 30 minutes).
            options = {"num_cpus": ACTOR_CPUS, "enable_task_events": False}
            if placed[index]:
                options["resources"] = {placed[index]: RESOURCE_SHARE}
            members.append(ray.remote(**options)(ReplayBuffer).remote(capacity, seed + index))
        return cls(ray, members, seed)

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def in_process(self) -> bool:
        """True when some shard lives in this process (learner.replay_in_learner)."""
        return any(isinstance(shard, InProcessShard) for shard in self.shards)

    def _submit(self, index: int, method: str, *args):
        """Starts ``method`` on shard ``index``: an ObjectRef for a Ray actor; an in-process shard runs it now."""
        shard = self.shards[index]
        if isinstance(shard, InProcessShard):
            return _Done(shard.call(method, *args))
        return getattr(shard, method).remote(*args)

    def _call(self, index: int, method: str, *args):
        """``method`` on shard ``index``, returning its result."""
        return self._gather([self._submit(index, method, *args)])[0]

    def _call_each(self, calls: list[tuple]) -> list:
        """Several calls (index, method, *args), the actors' in parallel (started before the in-process ones
        run); their results in order."""
        order = sorted(range(len(calls)), key=lambda i: isinstance(self.shards[calls[i][0]], InProcessShard))
        started = [None] * len(calls)
        for i in order:
            started[i] = self._submit(*calls[i])
        return self._gather(started)

    def _gather(self, started: list) -> list:
        refs = [item for item in started if not isinstance(item, _Done)]
        values = iter(self.ray.get(refs) if refs else [])
        return [item.value if isinstance(item, _Done) else next(values) for item in started]

    def shard_of(self, stream: str) -> int:
        """Index of the shard holding ``stream`` (every stream of its actor); an actor not seen before is placed on
        the shard holding the fewest actors, the one its id hashes to first (``shard_of``) among equals."""
        count = len(self.shards)
        if count == 1:
            return 0
        actor = actor_of(stream)
        with self._lock:
            index = self._placed.get(actor)
            if index is None:
                preferred = shard_of(actor, count)
                index = min(range(count), key=lambda i: (self._actors_per_shard[i], (i - preferred) % count))
                self._placed[actor] = index
                self._actors_per_shard[index] += 1
            return index

    @property
    def actors_per_shard(self) -> list[int]:
        """How many actors' streams each shard holds."""
        with self._lock:
            return list(self._actors_per_shard)

    def add(self, stream: str, stream_step: int, arrays: dict[str, np.ndarray]) -> int:
        """Stores a chunk in its stream's shard (returns once stored: an ack means the data is safe)."""
        return self._call(self.shard_of(stream), "add", stream, stream_step, arrays)

    def add_many(self, items: list[tuple[str, int, dict[str, np.ndarray]]]) -> int:
        """Stores chunks of several streams with one call per shard, the shards in parallel (returns once every
        one is stored); a stream's chunks keep their order."""
        groups: dict[int, list] = {}
        for item in items:
            groups.setdefault(self.shard_of(item[0]), []).append(item)
        return sum(self._call_each([(index, "add_many", group) for index, group in groups.items()]))

    def exclude(self, stream: str, start: int, n_steps: int) -> bool:
        """Keeps stream steps out of training, in the stream's shard."""
        return self._call(self.shard_of(stream), "exclude", stream, start, n_steps)

    def can_sample(self, length: int) -> bool:
        """True when some shard holds a segment of at least ``length`` steps."""
        return any(self._call_each([(index, "can_sample", length) for index in range(len(self.shards))]))

    def sample(self, batch_size: int, length: int, context: bool = False) -> dict[str, np.ndarray] | None:
        """``batch_size`` sequences drawn uniformly over all sequences of all shards, as ReplayBuffer.sample gives
        them (replay keys carry the shard index); None while too little data."""
        if len(self.shards) == 1:
            return self._call(0, "sample", batch_size, length, context)
        counts = np.array(self._call_each([(index, "sequences", length) for index in range(len(self.shards))]),
                          np.float64)
        if counts.sum() <= 0:
            return None
        with self._lock:
            split = self.rng.multinomial(batch_size, counts / counts.sum())
        drawn = [(index, int(n)) for index, n in enumerate(split) if n > 0]
        parts = self._call_each([(index, "sample", n, length, context) for index, n in drawn])
        if any(part is None for part in parts):       # a shard emptied meanwhile (evictions): try again later
            return None
        batch = _concatenate([index for index, _ in drawn], parts)
        with self._lock:
            order = self.rng.permutation(batch_size)  # shards mixed, as one replay's batch would be
        return {key: value[order] for key, value in batch.items()}

    def update_latents(self, replay_keys: np.ndarray, deter: np.ndarray, stoch: np.ndarray, classes: int) -> list:
        """Sends each row's latents to the shard its key names; fire and forget: returns the calls' object refs
        (``sum(self.written(refs))`` is the steps written; an in-process shard has written them already)."""
        if len(self.shards) == 1:
            return [self._submit(0, "update_latents", replay_keys, deter, stoch, classes)]
        keys = np.asarray(replay_keys, np.int64)
        deter, stoch = np.asarray(deter), np.asarray(stoch)
        owner = keys[:, 0] >> SHARD_BIT
        refs = []
        for index in np.unique(owner).tolist():
            if not 0 <= index < len(self.shards):
                continue
            rows = np.flatnonzero(owner == index)
            local = keys[rows].copy()
            local[:, 0] &= (1 << SHARD_BIT) - 1
            refs.append(self._submit(index, "update_latents", local, deter[rows], stoch[rows], classes))
        return refs

    def written(self, refs: list) -> list:
        """What the update_latents calls behind ``refs`` returned (waits for the actors' ones)."""
        return self._gather(refs)

    def stats(self) -> dict:
        """The shards' counters summed; with several shards also ``replay_shards``, ``replay_steps_per_shard`` and
        ``replay_actors_per_shard``."""
        if len(self.shards) == 1:
            return self._call(0, "stats")
        each = self._call_each([(index, "stats") for index in range(len(self.shards))])
        total = {key: sum(stats[key] for stats in each) for key in each[0]}
        total["replay_shards"] = len(self.shards)
        total["replay_steps_per_shard"] = [stats["replay_steps"] for stats in each]
        total["replay_actors_per_shard"] = self.actors_per_shard
        return total


def _concatenate(indices: list[int], parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The shards' batches as one; replay keys tagged with their shard. A key some parts lack (context latents of
    a shard that had no write-back yet, whose rows are then not context_valid) is zeros in those rows."""
    keys = list(dict.fromkeys(key for part in parts for key in part))
    batch = {}
    for key in keys:
        template = next(part[key] for part in parts if key in part)
        values = []
        for index, part in zip(indices, parts):
            size = len(next(iter(part.values())))
            value = part[key] if key in part else np.zeros((size, *template.shape[1:]), template.dtype)
            if key == "replay_keys" and index:
                value = np.array(value, np.int64)
                value[:, 0] += index << SHARD_BIT
            values.append(value)
        batch[key] = np.concatenate(values)
    return batch
