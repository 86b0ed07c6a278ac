"""The ``robotd`` command line: train (all three processes on one machine), watch, check, keys; the processes
(daemon, actor, learner) and the tools (replay, inspect, eval, export) are programs of their own.

``robotd`` never imports the actor or learner packages: it starts them as separate processes
by module name (``python -m actor``, ``python -m learner``), as a session does anyway.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import sys
import textwrap
import time
from pathlib import Path

from robotd import config as config_module

EXIT_USAGE = 2
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mock_arm.yaml"

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def version() -> str:
    """The installed package's version (its metadata); from pyproject.toml when robotd is not installed."""
    try:
        return importlib.metadata.version("robotd")
    except importlib.metadata.PackageNotFoundError:
        return _pyproject_version(PYPROJECT)


def _pyproject_version(path: Path) -> str:
    """``[project] version`` of a pyproject.toml, or "unknown" when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "unknown"
    try:
        import tomllib
    except ImportError:                 # Python 3.10: the first version line of the [project] table
        project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        found = re.search(r'^version\s*=\s*["\']([^"\']+)["\']', project.group(1), re.M) if project else None
        return found.group(1) if found else "unknown"
    try:
        value = tomllib.loads(text)["project"]["version"]
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        return "unknown"
    return value if isinstance(value, str) else "unknown"


class _VersionAction(argparse.Action):
    """``--version``: prints ``robotd VERSION`` and exits (the version is looked up only when asked for)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"robotd {version()}")
        parser.exit()


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help for every robotd command: the description and the examples keep their line breaks, and each option
    shows its default, except where there is none to show (None, False, an empty list) or its help already
    says what happens by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS or default in ("", [])
        if nothing or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def described(text: str, width: int = 79) -> str:
    """A description for --help: each paragraph (separated by a blank line) filled to ``width`` columns."""
    return "\n\n".join(textwrap.fill(" ".join(paragraph.split()), width) for paragraph in text.split("\n\n"))


def examples(*pairs: tuple[str, str]) -> str:
    """An ``examples:`` section for a parser's epilog from (what it does, command line) pairs."""
    lines = ["examples:"]
    for what, command in pairs:
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines)


def program_parser(prog: str, description: str, *example_pairs: tuple[str, str]) -> argparse.ArgumentParser:
    """The parser of a robotd program (``robotd actor``, ``robotd replay``, ...): its description, its examples
    and the defaults of its options in --help."""
    return argparse.ArgumentParser(prog=prog, description=described(description), epilog=examples(*example_pairs),
                                   formatter_class=HelpFormatter)


LOGDIR_HELP = "session directory (default: runs/<config name>-<date>-<time>)"


def add_common(parser: argparse.ArgumentParser, *, logdir_required: bool = False,
               logdir_help: str = LOGDIR_HELP) -> None:
    """Arguments every process takes: the config file, overrides and the log directory."""
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                        help="YAML config file (see configs/); default: configs/mock_arm.yaml, the mock arm session")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key by its dotted path, e.g. --set control.rate_hz=50 (repeatable)")
    parser.add_argument("--logdir", required=logdir_required, default=None, help=logdir_help)


def add_robot_id(parser: argparse.ArgumentParser) -> None:
    """``--robot-id NAME``: this process serves one robot of a fleet feeding one learner."""
    from robotd.status import ROBOT_NAME
    def robot_name(text: str) -> str:
        if not ROBOT_NAME.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a robot name: use 1 to 32 letters, digits, '-' or "
                                             f"'_', e.g. arm2")
        return text
    parser.add_argument("--robot-id", type=robot_name, default=None, metavar="NAME",
                        help="this robot's name in a fleet of robots feeding one learner: status and stats go out "
                             "as daemon.NAME / actor.NAME (default: a single robot)")


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
# Subcommands that are programs of their own (python -m MODULE): robotd never imports the actor or learner.
PROGRAMS = {"daemon": "robotd.daemon", "actor": "actor", "learner": "learner", "replay": "learner.offline", "inspect": "tools.inspect",
            "eval": "learner.evaluate", "export": "tools.export"}


def _exec_module(module: str, argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return 0  # not reached


def check_steps(steps: int, config: config_module.Config) -> None:
    """``robotd train --steps N``: N must reach what the config needs before the learner's first update (a
    shorter session collects steps but never trains); a one-line ValueError otherwise."""
    from robotd.orchestrator import first_update_steps
    needed, why, key = first_update_steps(config)
    if steps < 1:
        raise ValueError(f"--steps {steps}: give a positive number of environment steps, at least the {needed} this "
                         f"config needs before the learner's first update ({why}), e.g. --steps {max(needed, 2500)}")
    if steps < needed:
        raise ValueError(f"--steps {steps} is below the {needed} steps this config needs before the learner's first "
                         f"update ({why}); give --steps {needed} or more, or lower {key}")


MAX_ROBOTS = 64


def check_robots(robots: int, steps: int | None, config: config_module.Config) -> None:
    """``robotd train --robots N``: 1 to MAX_ROBOTS, several only of simulated robots (one machine cannot run
    several copies of one real robot), and at least one step each; a one-line ValueError otherwise."""
    if not 1 <= robots <= MAX_ROBOTS:
        raise ValueError(f"--robots {robots}: give 1 to {MAX_ROBOTS} robots, e.g. --robots 2")
    if robots == 1:
        return
    device = config_module.non_simulated_device(config)
    if device is not None:
        raise ValueError(f"--robots {robots}: {device} is not a simulated driver, and one machine has one of each "
                         f"real robot: run a fleet of real robots as a daemon and an actor per robot PC "
                         f"(--robot-id NAME) feeding one learner")
    if steps is not None and steps < robots:
        raise ValueError(f"--steps {steps} is fewer than one step per robot for --robots {robots}: give more steps")


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
        if args.steps is not None:
            check_steps(args.steps, config)
        if args.minutes is not None and not args.minutes > 0:
            raise ValueError(f"--minutes {args.minutes}: give a positive wall-clock limit, e.g. --minutes 60")
        check_robots(args.robots, args.steps, config)
        return train(config, logdir=logdir, steps=args.steps, minutes=args.minutes, robots=args.robots)
    except USER_ERRORS as exc:
        return fail("train", exc)


def cmd_watch(args) -> int:
    from robotd import watch
    setup_logging("watch")
    try:
        watch.check_arguments(address=args.status if args.status is not None else "-", seconds=args.seconds,
                              silent_after_s=args.silent_after, json_path=args.json, config_path=args.config)
        config = load_config(args)
        return watch.run(config, address=args.status, seconds=args.seconds, json_path=args.json,
                         silent_after_s=args.silent_after, config_path=args.config)
    except USER_ERRORS as exc:
        return fail("watch", exc)


def cmd_check(args) -> int:
    from robotd.daemon import check
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


def _subcommand(sub, name: str, summary: str, description: str, *example_pairs: tuple[str, str]):
    """A subcommand whose --help has a description, examples and the defaults of its options."""
    return sub.add_parser(name, help=summary, description=described(description), epilog=examples(*example_pairs),
                          formatter_class=HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robotd", formatter_class=HelpFormatter,
        description=described("Real-robot asynchronous world-model learning: a fixed-rate robot daemon, an actor "
                              "and a learner.\n\n`robotd COMMAND --help` describes each command, with examples."),
        epilog=examples(("all three processes on one machine", "robotd train configs/mock_arm.yaml --steps 3000 "
                                                               "--logdir runs/demo"),
                        ("on the robot PC", "robotd daemon configs/ur5_reach.yaml"),
                        ("on the robot PC, next to the daemon",
                         "robotd actor configs/ur5_reach.yaml --learner tcp://gpu-box:5555"),
                        ("on the GPU box (weights on port + 1)",
                         "robotd learner configs/ur5_reach.yaml --bind tcp://0.0.0.0:5555")))
    parser.add_argument("--version", action=_VersionAction, help="print robotd's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = _subcommand(
        sub, "train", "run daemon, actor and learner on this machine",
        "Run a whole session on this machine: the robot daemon, the actor and the learner as separate processes, "
        "with a live status line. It ends after --steps environment steps or --minutes of wall time (whichever "
        "comes first) or on Ctrl-C, stops the robot first, and writes LOGDIR/summary.json.",
        ("the mock arm for 3000 steps", "robotd train configs/mock_arm.yaml --steps 3000 --logdir runs/demo"),
        ("two simulated arms feeding one learner, 3000 steps between them",
         "robotd train configs/mock_arm.yaml --robots 2 --steps 3000 --logdir runs/fleet"),
        ("a Gymnasium pendulum in lockstep, for an hour at most",
         "robotd train configs/gym_pendulum.yaml --minutes 60 --set seed=1"),
        ("go on from the checkpoint of an earlier session, in a new log directory",
         "robotd train configs/mock_arm.yaml --init runs/demo/checkpoints/latest.pt --logdir runs/demo2"))
    add_common(train)
    train.add_argument("--steps", type=int, default=None,
                       help="stop after this many environment steps, at least what the config needs before the "
                            "learner's first update (learner.min_replay_steps); default: no step limit")
    train.add_argument("--minutes", type=float, default=None,
                       help="stop after this much wall-clock time (with --steps: whichever comes first); "
                            "default: no time limit")
    train.add_argument("--robots", type=int, default=1, metavar="N",
                       help="a fleet of N simulated robots feeding the one learner, each with its own seed, episodes "
                            "and stream (robot0, robot1, ...); --steps is their total")
    train.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="start the learner (and the robot's policy) from this checkpoint, e.g. robotd replay's "
                            "or an earlier session's LOGDIR/checkpoints/latest.pt")
    train.set_defaults(func=cmd_train)
    watch = _subcommand(
        sub, "watch", "show the status line of processes running on other machines",
        "Show the live status line of a session whose daemon, actor and learner run as separate commands, on "
        "one machine or several: it binds the status collector at network.status (or --status), where every "
        "process of the session publishes (they set the same network.status), and shows the line robotd train "
        "shows, about once a second, with the processes that went silent. It stops on Ctrl-C, SIGTERM or after "
        "--seconds, then prints the last counters of every process, when each was last heard from and the "
        "malformed messages dropped per sender (--json writes them too).\n\n"
        "The channel uses CurveZMQ as the experience channel does (network.auth: auto when the address leaves "
        "this machine, always, never): run it where learner.key_secret is, with network.keys_dir holding it and "
        "the robots' actors/*.key (the GPU box).",
        ("on the GPU box, for robot PCs that publish to tcp://10.0.0.5:5570",
         "robotd watch configs/mock_arm.yaml --status tcp://10.0.0.5:5570 --set network.keys_dir=keys"),
        ("on one machine, for a minute, keeping the report",
         "robotd watch configs/mock_arm.yaml --status tcp://127.0.0.1:5570 --seconds 60 --json watch.json"))
    watch.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                       help="YAML config file the processes use (see configs/); default: configs/mock_arm.yaml")
    watch.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set network.keys_dir=keys (repeatable)")
    watch.add_argument("--status", default=None, metavar="ADDRESS",
                       help="address to bind, an address of this machine (default: network.status)")
    watch.add_argument("--seconds", type=float, default=None,
                       help="stop after this many seconds; default: until Ctrl-C or SIGTERM")
    watch.add_argument("--silent-after", type=float, default=5.0, metavar="S",
                       help="show a process as silent when nothing came from it for S seconds")
    watch.add_argument("--json", default=None, metavar="FILE",
                       help="also write the exit report to FILE as JSON")
    watch.set_defaults(func=cmd_watch)
    check = _subcommand(
        sub, "check", "connect to every configured device and report what was found",
        "Connect to the robot and every camera of a config, read them for a while and report what each one "
        "sends (keys, shapes, rates, status); no motion is commanded. Exit code 1 when a device fails.",
        ("the UR5 and its camera", "robotd check configs/ur5_reach.yaml"),
        ("the arm alone, at another address, for 5 s",
         "robotd check configs/ur5_reach.yaml --set cameras=[] --set robot.args.host=192.168.1.10 --seconds 5"))
    check.add_argument("config", help="YAML config file (see configs/)")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set robot.args.host=127.0.0.2 (repeatable)")
    check.add_argument("--seconds", type=float, default=2.0, help="how long each device is measured")
    check.set_defaults(func=cmd_check)
    # These are their own programs (python -m MODULE); main() hands their arguments over, and each one's
    # --help has its own description and examples.
    sub.add_parser("daemon", help="the robot daemon (on the robot PC); robotd daemon --help for its options")
    sub.add_parser("actor", help="the actor (on the robot PC); robotd actor --help for its options")
    sub.add_parser("learner", help="the learner (on the GPU box); robotd learner --help for its options")
    sub.add_parser("replay", help="train a learner offline from recorded sessions; robotd replay --help")
    sub.add_parser("inspect", help="a recorded session's episodes, plots, videos and an HTML report; "
                                   "robotd inspect --help")
    sub.add_parser("eval", help="a simulated session's policy on fixed episodes beside a random policy; "
                                "robotd eval --help")
    sub.add_parser("export", help="export recorded episodes to another format (LeRobot); robotd export --help")
    keys = _subcommand(
        sub, "keys", "make CurveZMQ keys for a learner and its actors",
        "Make the CurveZMQ key pairs of a learner and its actors in one directory, for sessions split over "
        "machines. Copy learner.key and actors/<name>.key* to each robot PC, keep learner.key_secret on the "
        "learner, and set network.keys_dir=DIR on both sides.",
        ("keys for one learner and two robots", "robotd keys keys/ --actors arm1,arm2"))
    keys.add_argument("keys_dir", help="directory for the keys (made if missing)")
    keys.add_argument("--actors", default="actor", help="comma-separated actor key names")
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
