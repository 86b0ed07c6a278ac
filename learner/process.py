"""The learner process: ``python -m learner`` (also ``robotd learner``) -> :func:`main` -> :func:`run`; the
learner itself is ``learner.loop.Learner``."""
from __future__ import annotations

import argparse
import signal
import sys

from robotd import cli
from robotd.config import Config


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``robotd learner``."""
    parser = cli.program_parser(
        "robotd learner",
        "The learner: trains the world model and the policy from the experience actors stream to it, and "
        "publishes new weights to them (on the experience port + 1). It runs until stopped (Ctrl-C) and "
        "checkpoints to LOGDIR/checkpoints/latest.pt every learner.checkpoint_every_s and at the end; started "
        "again on the same --logdir it resumes from there.",
        ("on the GPU box, open to the robot PCs (needs keys: robotd keys DIR, then network.keys_dir=DIR)",
         "robotd learner configs/ur5_reach.yaml --bind tcp://0.0.0.0:5555 --set network.keys_dir=keys/ "
         "--logdir runs/ur5"),
        ("on this machine, its Ray work on the Ray cluster this machine belongs to",
         "robotd learner configs/mock_arm.yaml --ray-address auto --logdir runs/ray"))
    cli.add_common(parser)
    parser.add_argument("--bind", default=None,
                        help="experience address to bind, e.g. tcp://0.0.0.0:5555; the weights go out on its port + 1 "
                             "(default: network.experience and network.weights)")
    parser.add_argument("--ray-address", default=None,
                        help="join an existing Ray cluster (auto, host:port or ray://host:port) with Ray's token auth: "
                             "the token in learner.ray_token_file or RAY_AUTH_TOKEN (default: a local Ray on loopback)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging("learner")
    overrides = list(args.overrides)
    if args.bind:
        overrides.append(f"network.experience={args.bind}")
        host, _, port = args.bind.rpartition(":")
        if port.isdigit() and not any(o.startswith("network.weights=") for o in overrides):
            overrides.append(f"network.weights={host}:{int(port) + 1}")
    if args.ray_address:
        overrides.append(f"learner.ray_address={args.ray_address}")
    args.overrides = overrides
    try:
        config = cli.load_config(args)
        stats = run(config, logdir=args.logdir or cli.default_logdir(args.config))
    except cli.USER_ERRORS as exc:
        return cli.fail("learner", exc)
    print(f"learner: {stats['learner_updates']} updates, {stats['ingested_steps']} steps ingested, "
          f"weights v{stats['published_version']}", file=sys.stderr)
    return 0


def run(config: Config, *, logdir: str) -> dict:
    """Runs the learner until SIGINT/SIGTERM, then checkpoints; returns its counters."""
    from learner.loop import Learner  # torch and the rest: imported once the command line is read
    learner = Learner(config, logdir=logdir)

    def request_stop(signum, _frame):
        learner.stop_requested.set()

    def install_handlers():
        # Ray's core worker installs its own SIGTERM handler (which aborts); ours must win.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
    install_handlers()
    learner.on_ray_started = install_handlers
    return learner.run()
