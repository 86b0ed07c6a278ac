"""Data-parallel training (learner.parallel) on two CPU ranks with the gloo backend: the ranks start from rank
0's weights, average their gradients and return-normaliser ranges, keep identical weights, and stop together."""
import pytest
import torch
import torch.multiprocessing as mp

from learner.dreamer import Dreamer, preset
from tests.test_dreamer import ACTION_DIM, OBS_SPEC, make_batch

UPDATES = 3


def run_rank(rank: int, address: str, out: str) -> None:
    """One rank: its own initial weights (seeded by rank), its own batches; rank 0 stops after UPDATES updates,
    rank 1 trains until the group says stop."""
    from learner.parallel import Ranks
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    agent = Dreamer(OBS_SPEC, ACTION_DIM, preset("tiny"))
    ranks = Ranks(rank, 2, address, timeout_s=120)
    ranks.attach(agent)
    if rank == 0:
        for update in range(UPDATES):
            assert ranks.go()
            agent.train_step(make_batch(100 + update))
        ranks.stop()
    else:
        while ranks.go():
            agent.train_step(make_batch(200 + agent.updates))
        ranks.close()
    torch.save({"updates": agent.updates, "state": agent.state_dict(),
                "scale": agent.return_normaliser.scale()}, out)


def test_two_cpu_ranks_keep_identical_weights_and_stop_together(tmp_path):
    address = f"file://{tmp_path / 'rendezvous'}"
    outs = [str(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    context = mp.get_context("spawn")
    workers = [context.Process(target=run_rank, args=(rank, address, outs[rank]))
               for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(240)
    assert [worker.exitcode for worker in workers] == [0, 0]
    results = [torch.load(out) for out in outs]
    assert [result["updates"] for result in results] == [UPDATES, UPDATES]       # rank 1 stopped with rank 0
    first, second = (result["state"] for result in results)
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert different == []
    assert torch.equal(results[0]["scale"], results[1]["scale"])

    # The averaging did something: rank 0 alone on its own batches ends elsewhere.
    torch.manual_seed(0)
    alone = Dreamer(OBS_SPEC, ACTION_DIM, preset("tiny"))
    for update in range(UPDATES):
        alone.train_step(make_batch(100 + update))
    moved = [name for name, value in alone.state_dict().items()
             if value.is_floating_point() and not torch.equal(value, first[name])]
    assert moved, "two ranks trained exactly as rank 0 alone: the gradients were not averaged"


@pytest.mark.slow  # 27 s (a whole robotd train session); the two ranks' averaging and stop are tested above
def test_a_session_with_two_data_parallel_ranks_trains_them_in_step_with_equal_weights(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    logdir = tmp_path / "ddp"
    argv = [sys.executable, "-m", "robotd", "train", str(root / "configs" / "mock_arm.yaml"), "--steps", "800",
            "--logdir", str(logdir), "--set", "control.rate_hz=50", "--set", "control.action_deadline_ms=15",
            "--set", "actor.prefill_steps=100", "--set", "learner.min_replay_steps=64", "--set",
            "learner.batch_size=4", "--set", "learner.batch_length=16", "--set", "learner.publish_every_updates=2",
            "--set", "learner.data_parallel_ranks=2"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    learner = json.loads((logdir / "stats" / "learner.json").read_text())
    parallel = learner["data_parallel"]
    assert parallel["ranks"] == 2 and parallel["weights_agree"] is True
    updates = learner["learner_updates"]
    assert updates > 0 and parallel["rank_updates"] == [updates, updates]
    assert learner["replayed_steps"] == updates * 4 * 16 * 2          # every update trains on one batch per rank
