"""The daemon process: ``python -m robotd.daemon`` (also ``robotd daemon``) -> :func:`main` -> :func:`run`."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from robotd import cli, session
from robotd.config import Config


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``robotd daemon``."""
    parser = cli.program_parser(
        "robotd daemon",
        "The robot daemon: runs the fixed-rate control loop on the robot PC, serves observations to the actor on "
        "network.control and applies its actions through the safety layer; stops the robot when the actor is "
        "late or gone.",
        ("the UR5 daemon", "robotd daemon configs/ur5_reach.yaml"),
        ("the mock arm at 50 Hz, writing its stats into a session directory",
         "robotd daemon configs/mock_arm.yaml --set control.rate_hz=50 --logdir runs/split"))
    cli.add_common(parser, logdir_help="session directory for the daemon's stats (default: none, nothing is written)")
    cli.add_robot_id(parser)
    return parser


def run(config: Config, *, logdir: str | None = None, robot: str | None = None) -> dict:
    """Runs the daemon until SIGINT/SIGTERM, then stops the robot; returns its counters."""
    from robotd.daemon.loop import Daemon
    daemon = Daemon(config, logdir=logdir, robot=robot)

    def request_stop(signum, _frame):
        daemon.stop_requested.set()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return daemon.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging("daemon")
    try:
        config = cli.load_config(args)
        if args.logdir:
            session.prepare(args.logdir)
        stats = run(config, logdir=args.logdir, robot=args.robot_id)
    except cli.USER_ERRORS as exc:
        return cli.fail("daemon", exc)
    logging.getLogger("robotd.daemon").info("stopped after %d ticks (%d with an actor), %d late",
                                            stats["ticks"], stats["actor_ticks"], stats["late_steps"])
    if stats.get("stop_reason"):
        print(f"robotd daemon: error: {stats['stop_reason']}; the robot was stopped", file=sys.stderr)
        return 1
    return 0
