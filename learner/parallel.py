"""Data-parallel training: several ranks train one agent, each on its own replay batches.

Every rank holds the whole agent. :class:`Ranks` joins a ``torch.distributed`` process group (NCCL on GPUs,
gloo on CPUs, so the same path runs in CI) and ties an agent to it:

* at :meth:`Ranks.attach`, every parameter and buffer is broadcast from rank 0 (and the optimiser's state), so
  all ranks start from rank 0's weights whatever they were initialised with;
* after every backward pass the gradients are averaged over the ranks in one all-reduce of one flat buffer
  (the agent's ``reduce_gradients`` hook), so every rank's optimiser takes the same step;
* the return normaliser's batch range is averaged the same way (its ``reduce`` hook), so its scale, the one
  piece of training state outside the parameters, stays the same on every rank too.

The weights therefore stay identical on every rank; rank 0 publishes them and writes the checkpoints.

Every update starts with one more collective, :meth:`Ranks.go`: a one-value all-reduce, 1 from a rank that
goes on and 0 from one that stops (:meth:`Ranks.stop`). When any rank stops, ``go`` is False on every rank and
all of them leave the loop at the same update, so no rank is left waiting in a collective for ever.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("learner.parallel")


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


class Ranks:
    """This process's place in a data-parallel group (see the module docstring).

    ``address`` is the rendezvous, ``file:///PATH``: a file every rank reads (they all run on one machine). ``timeout_s`` bounds every collective: a rank that dies mid-training makes the
    others fail after it instead of hanging."""

    def __init__(self, rank: int, world_size: int, address: str, *, device: torch.device | str = "cpu",
                 timeout_s: float = 600.0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if not address.startswith("file://"):
            raise ValueError(f"data-parallel rendezvous {address!r} is not file:///PATH (a file every rank can reach)")
        # Nothing of the group listens beyond loopback: the rendezvous is a file (torch's TCP store would listen on
        # every interface, without authentication) and the backends' own sockets stay on the loopback interface.
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        os.environ["NCCL_SOCKET_IFNAME"] = "lo"
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        dist.init_process_group(backend_for(self.device), init_method=address, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        self._parameters: list[torch.nn.Parameter] = []
        self.reductions = 0
        self.workers: list = []             # rank 0 of a learner: the other ranks' Ray actors (start_ranks)

    @property
    def is_publisher(self) -> bool:
        """Rank 0 publishes the weights and writes the checkpoints."""
        return self.rank == 0

    def attach(self, agent) -> None:
        """Starts every rank from rank 0's agent (parameters, buffers, optimiser state) and hooks the agent's
        gradient and return-normaliser reductions to this group."""
        with torch.no_grad():
            for tensor in self._state_tensors(agent):
                dist.broadcast(tensor, src=0)
        self._parameters = [p for group in agent.optimiser.param_groups for p in group["params"]]
        agent.reduce_gradients = self.average_gradients
        agent.return_normaliser.reduce = self.average

    def _state_tensors(self, agent) -> Iterable[torch.Tensor]:
        yield from agent.parameters()
        yield from (buffer for buffer in agent.buffers() if buffer.is_floating_point() or buffer.dtype == torch.long)
        for state in agent.optimiser.state.values():
            yield from (value for value in state.values() if isinstance(value, torch.Tensor))

    def go(self) -> bool:
        """Called by every rank before every update: True while no rank has stopped."""
        flag = torch.ones(1, device=self.device)
        dist.all_reduce(flag)
        return flag.item() > self.world_size - 0.5

    def stop(self) -> None:
        """In place of :meth:`go`: tells the other ranks that this update is not taken (their ``go`` is False),
        then leaves the group."""
        try:
            dist.all_reduce(torch.zeros(1, device=self.device))
        finally:
            self.close()

    def average_gradients(self) -> None:
        """Replaces every parameter's gradient by its mean over the ranks, in one all-reduce of one flat buffer."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._parameters]
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
        self._mean(flat)
        offset = 0
        for parameter, grad in zip(self._parameters, grads):
            n = grad.numel()
            if parameter.grad is not None:
                parameter.grad.copy_(flat[offset:offset + n].view_as(grad).to(grad.dtype))
            offset += n

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """``value``'s mean over the ranks (a small tensor such as the return normaliser's batch range)."""
        flat = value.detach().reshape(-1).float().clone()
        self._mean(flat)
        return flat.view_as(value).to(value.dtype)

    def close(self) -> None:
        """Leaves the process group (once)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def _mean(self, flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        self.reductions += 1


# ------------------------------------------------------------------------------------------------
# The learner's other ranks: Ray actors on the learner's node, each with its own agent and batches.

RANK_START_S = 300.0
"""How long rank 0 waits for the other ranks' actors to be built (torch imported, agent made)."""
RANK_TIMEOUT_S = 24 * 3600.0
"""Collectives may wait this long: rank 0 holds the others at ``go`` while it waits for new steps (a robot that
is reset or paused); a learner that dies takes its rank actors with it (they are its Ray actors)."""


def weights_digest(agent) -> str:
    """A hash of every parameter's bytes: equal on two ranks exactly when their weights are."""
    digest = hashlib.sha256()
    for name, parameter in agent.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class RankWorker:
    """Rank k > 0 of the learner (made a Ray actor by :func:`start_ranks`): trains its own agent on its own replay
    batches in step with rank 0 until rank 0 stops, then returns its update count and weights digest."""

    def __init__(self, config, spec: dict, action_discrete: bool, rank: int, world_size: int, address: str,
                 shards: list, device: str, threads: int) -> None:
        import ray

        from learner.shards import ShardedReplay
        from learner.trainer import Trainer
        torch.set_num_threads(threads)
        self.config, self.rank, self.world_size, self.address = config, rank, world_size, address
        self.trainer = Trainer(config, spec, device, Path(tempfile.gettempdir()), action_discrete=action_discrete)
        self.replay = ShardedReplay(ray, shards, seed=config.seed + 1000 * rank)

    def ready(self) -> int:
        """Answers once the worker is built (its agent too): rank 0 waits for this before the rendezvous."""
        return self.rank

    def run(self) -> dict:
        from learner.trainer import Prefetcher
        learner = self.config.learner
        trainer = self.trainer
        context = trainer.replay_context

        def sample():
            batch = self.replay.sample(learner.batch_size, learner.batch_length, context)
            return trainer.prepare(batch) if batch is not None else None
        ranks = Ranks(self.rank, self.world_size, self.address, device=trainer.agent.device,
                      timeout_s=RANK_TIMEOUT_S)
        prefetch = Prefetcher(sample)
        try:
            ranks.attach(trainer.agent)
            prefetch.start()
            while ranks.go():
                batch = prefetch.get(timeout_s=1.0)
                while batch is None:                 # rank 0 had a batch, so the replay has data: it comes
                    batch = prefetch.get(timeout_s=1.0)
                trainer.train(batch)
                writeback = trainer.latent_writeback()
                if writeback is not None:
                    self.replay.update_latents(*writeback)
        finally:
            prefetch.stop()
            ranks.close()
        return {"rank": self.rank, "updates": trainer.updates, "weights": weights_digest(trainer.agent)}


def start_ranks(ray, config, spec: dict, action_discrete: bool, replay, device: str, agent) -> tuple[Ranks, list]:
    """Starts ranks 1..K-1 (K = learner.data_parallel_ranks) as Ray actors on this node, joins them as rank 0 with
    ``agent`` (whose weights they all start from) and returns (this rank's Ranks, the workers' run refs).

    Every rank stays on this node and the group meets through a file: torch.distributed's TCP rendezvous has no
    authentication and listens on every interface, so it is not used (ranks on other machines are not supported)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    world_size = config.learner.data_parallel_ranks
    address = f"file://{tempfile.mkdtemp(prefix='robotd-ranks-')}/rendezvous"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    options = {"scheduling_strategy": here, "enable_task_events": False}
    if torch.device(device).type == "cuda":
        options["num_gpus"] = 1
    else:
        options["num_cpus"] = 0.25
    threads = max(1, config.learner_threads() // world_size)
    worker = ray.remote(**options)(RankWorker)
    workers = [worker.remote(config, spec, action_discrete, rank, world_size, address, list(replay.shards),
                             "cuda" if options.get("num_gpus") else "cpu", threads) for rank in range(1, world_size)]
    # The rendezvous below waits as long as the collectives may (a day): first make sure every rank was built.
    try:
        ray.get([w.ready.remote() for w in workers], timeout=RANK_START_S)
    except Exception as exc:  # noqa: BLE001 - a rank that cannot start (no GPU free, an import error, a timeout)
        for w in workers:
            ray.kill(w)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"learner.data_parallel_ranks = {world_size}: a rank could not start within "
                           f"{RANK_START_S:.0f} s ({reason[:300]}); lower learner.data_parallel_ranks") from None
    runs = [w.run.remote() for w in workers]
    ranks = Ranks(0, world_size, address, device=device, timeout_s=RANK_TIMEOUT_S)
    ranks.workers = workers             # their handles live as long as the group: Ray ends an actor with no handle
    ranks.attach(agent)
    log.info("data-parallel: %d ranks on this node (%s), meeting at %s", world_size, backend_for(device), address)
    return ranks, runs
