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
import logging
from collections.abc import Iterable

import torch
import torch.distributed as dist

log = logging.getLogger("learner.parallel")


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


class Ranks:
    """This process's place in a data-parallel group (see the module docstring).

    ``address`` is where rank 0 listens for the others, ``tcp://HOST:PORT`` (a free port on rank 0's machine;
    on one machine, loopback). ``timeout_s`` bounds every collective: a rank that dies mid-training makes the
    others fail after it instead of hanging."""

    def __init__(self, rank: int, world_size: int, address: str, *, device: torch.device | str = "cpu",
                 timeout_s: float = 600.0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if not address.startswith("tcp://"):
            raise ValueError(f"data-parallel address {address!r} is not tcp://HOST:PORT")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        dist.init_process_group(backend_for(self.device), init_method=address, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        self._parameters: list[torch.nn.Parameter] = []
        self.reductions = 0

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
