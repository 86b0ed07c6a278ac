"""The actor process: ``python -m actor`` (also ``robotd actor``) -> :func:`main` -> :func:`run`; the
actor itself is ``actor.loop.Actor``."""
from __future__ import annotations

import argparse
import signal
import sys

from robotd import cli
from robotd.config import Config


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``robotd actor``."""
    parser = cli.program_parser(
        "robotd actor",
        "The actor: runs the policy against a robot daemon on this machine (random actions for the first "
        "actor.prefill_steps), writes every step to LOGDIR/episodes/, streams them to the learner and takes "
        "the learner's new weights as they come.",
        ("on the robot PC, next to `robotd daemon`, with the learner on the GPU box",
         "robotd actor configs/ur5_reach.yaml --learner tcp://gpu-box:5555 --logdir runs/ur5"),
        ("100 steps against a local daemon and learner", "robotd actor configs/mock_arm.yaml --steps 100"))
    cli.add_common(parser)
    parser.add_argument("--learner", default=None,
                        help="experience address of the learner, e.g. tcp://gpu-box:5555 (default: network.experience)")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop after this many environment steps (default: run until stopped)")
    parser.add_argument("--actor-id", default=None,
                        help="name of this actor in the session (default: the --robot-id, else host-pid)")
    cli.add_robot_id(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging("actor")
    try:
        config = cli.load_config(args)
        stats = run(config, logdir=args.logdir or cli.default_logdir(args.config), learner_address=args.learner,
                    max_steps=args.steps, actor_id=args.actor_id, robot=args.robot_id)
    except cli.USER_ERRORS as exc:
        return cli.fail("actor", exc)
    print(f"actor: {stats['env_steps']} steps, {stats['episodes']} episodes, "
          f"policy v{stats['policy_version_max']}, {stats['unacked_chunks']} chunks unacked", file=sys.stderr)
    if stats.get("stop_reason") == "spool full":
        print("robotd actor: error: the spool reached actor.spool_max_mb with the learner not acknowledging: "
              "collection stopped; start the learner (or raise actor.spool_max_mb) and run the actor again on this "
              "log directory to send what is kept", file=sys.stderr)
        return 3
    if stats["unacked_chunks"]:
        print(f"robotd actor: error: {stats['unacked_chunks']} chunks ({stats.get('unacked_steps', 0)} steps) never "
              f"reached a learner: they are kept in the log directory's spool/; run the actor again on it with the "
              f"learner up to send them (every step is in the episode files too)", file=sys.stderr)
        return 3
    return 0


def run(config: Config, *, logdir: str, learner_address: str | None = None, max_steps: int | None = None,
        actor_id: str | None = None, robot: str | None = None) -> dict:
    """Runs the actor until its steps are done or SIGINT/SIGTERM; returns its counters."""
    from actor.loop import Actor  # torch and the rest: imported once the command line is read
    actor = Actor(config, logdir=logdir, learner_address=learner_address, max_steps=max_steps, actor_id=actor_id,
                  robot=robot)

    def request_stop(signum, _frame):
        actor.stop_requested.set()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return actor.run()
