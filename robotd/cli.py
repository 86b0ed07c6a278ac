"""The ``robotd`` command line: train (all three processes on one machine), daemon, actor, learner.

``robotd`` never imports the actor or learner packages: it starts them as separate processes
by module name (``python -m actor``, ``python -m learner``), as a session does anyway.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from robotd import config as config_module
from robotd import session

EXIT_USAGE = 2
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mock_arm.yaml"

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)


def add_common(parser: argparse.ArgumentParser, *, logdir_required: bool = False) -> None:
    """Arguments every process takes: the config file, overrides and the log directory."""
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                        help="YAML config file (see configs/); default: the mock arm session")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key by its dotted path, e.g. --set control.rate_hz=50")
    parser.add_argument("--logdir", required=logdir_required, default=None, help="session directory")


def setup_logging(process: str) -> None:
    """One log format for every process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def fail(process: str, error: BaseException) -> int:
    """Prints a user-facing error as one line and returns the exit code."""
    print(f"robotd {process}: error: {error}", file=sys.stderr)
    return EXIT_USAGE


def load_config(args) -> config_module.Config:
    """Loads the config named on the command line with its overrides."""
    return config_module.load(args.config, args.overrides)


def default_logdir(config_path: str) -> str:
    """runs/<config name>-<date-time>."""
    return str(Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}")


# ------------------------------------------------------------------------------------------------
def cmd_daemon(args) -> int:
    from robotd import daemon
    setup_logging("daemon")
    try:
        config = load_config(args)
        if args.logdir:
            session.prepare(args.logdir)
        stats = daemon.run(config, logdir=args.logdir)
    except USER_ERRORS as exc:
        return fail("daemon", exc)
    logging.getLogger("robotd.daemon").info("stopped after %d ticks (%d with an actor), %d late",
                                            stats["ticks"], stats["actor_ticks"], stats["late_steps"])
    if stats.get("stop_reason"):
        print(f"robotd daemon: error: {stats['stop_reason']}; the robot was stopped", file=sys.stderr)
        return 1
    return 0


# Subcommands that are programs of their own (python -m MODULE): robotd never imports the actor or learner.
PROGRAMS = {"actor": "actor", "learner": "learner", "replay": "learner.offline", "inspect": "learner.inspect",
            "eval": "learner.evaluate", "export": "robotd.export"}


def _exec_module(module: str, argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return 0  # not reached


def cmd_train(args) -> int:
    from robotd.orchestrator import train
    setup_logging("train")
    try:
        if args.init is not None:
            init = Path(args.init).resolve()
            if not init.is_file():
                raise ValueError(f"--init {args.init!r}: no such checkpoint file (robotd replay writes "
                                 f"LOGDIR/checkpoints/latest.pt)")
            args.overrides = [*args.overrides, f"learner.init_checkpoint={init}"]
        config = load_config(args)
        logdir = args.logdir or default_logdir(args.config)
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps {args.steps}: give a positive number of environment steps, e.g. --steps 2500")
        if args.minutes is not None and not args.minutes > 0:
            raise ValueError(f"--minutes {args.minutes}: give a positive wall-clock limit, e.g. --minutes 60")
        return train(config, logdir=logdir, steps=args.steps, minutes=args.minutes)
    except USER_ERRORS as exc:
        return fail("train", exc)


def cmd_check(args) -> int:
    from robotd import check
    setup_logging("check")
    try:
        config = load_config(args)
    except USER_ERRORS as exc:
        return fail("check", exc)
    if not args.seconds > 0:
        return fail("check", ValueError(f"--seconds {args.seconds} must be positive, e.g. --seconds 2"))
    return check.run(config, seconds=args.seconds, out=print,
                     err=lambda line: print(line, file=sys.stderr))


def cmd_keys(args) -> int:
    from robotd import security
    try:
        written = security.init_keys(args.keys_dir, actors=args.actors.split(","))
    except (security.SecurityError, ValueError) as exc:
        return fail("keys", exc)
    for path in written:
        print(path)
    print(f"copy learner.key and actors/<name>.key* to each robot PC; keep learner.key_secret on the learner; "
          f"set network.keys_dir={args.keys_dir} on both sides", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robotd", description="Real-robot asynchronous world-model learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run daemon, actor and learner on this machine")
    add_common(train)
    train.add_argument("--steps", type=int, default=None, help="stop after this many environment steps")
    train.add_argument("--minutes", type=float, default=None,
                       help="stop after this much wall-clock time (with --steps: whichever comes first)")
    train.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="start the learner (and the robot's policy) from this checkpoint, e.g. robotd replay's")
    train.set_defaults(func=cmd_train)
    check = sub.add_parser("check", help="connect to every configured device and report what was found")
    check.add_argument("config", help="YAML config file (see configs/)")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set robot.args.host=127.0.0.2")
    check.add_argument("--seconds", type=float, default=2.0, help="how long each device is measured (default 2)")
    check.set_defaults(func=cmd_check)
    daemon = sub.add_parser("daemon", help="the robot daemon (on the robot PC)")
    add_common(daemon)
    daemon.set_defaults(func=cmd_daemon)
    # These are their own programs (python -m MODULE); main() hands their arguments over.
    sub.add_parser("actor", help="the actor (on the robot PC); robotd actor --help for its options")
    sub.add_parser("learner", help="the learner (on the GPU box); robotd learner --help for its options")
    sub.add_parser("replay", help="train a learner offline from recorded sessions; robotd replay --help")
    sub.add_parser("inspect", help="a recorded session's episodes, plots, videos and an HTML report; "
                                   "robotd inspect --help")
    sub.add_parser("eval", help="a simulated session's policy on fixed episodes beside a random policy; "
                                "robotd eval --help")
    sub.add_parser("export", help="export recorded episodes to another format (LeRobot); robotd export --help")
    keys = sub.add_parser("keys", help="make CurveZMQ keys for a learner and its actors")
    keys.add_argument("keys_dir", help="directory for the keys (made if missing)")
    keys.add_argument("--actors", default="actor", help="comma-separated actor key names (default: actor)")
    keys.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robotd`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PROGRAMS:
        return _exec_module(PROGRAMS[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
