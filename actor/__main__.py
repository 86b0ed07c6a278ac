"""``python -m actor`` (also ``robotd actor``): the actor process."""
from __future__ import annotations

import argparse
import sys

from robotd import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robotd actor", description="Run the policy against a robot daemon.")
    cli.add_common(parser)
    parser.add_argument("--learner", default=None, help="experience address of the learner, e.g. tcp://gpu-box:5555")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many environment steps")
    parser.add_argument("--actor-id", default=None, help="name of this actor in the session (default host-pid)")
    args = parser.parse_args(argv)
    cli.setup_logging("actor")
    try:
        config = cli.load_config(args)
        from actor.main import run
        stats = run(config, logdir=args.logdir or cli.default_logdir(args.config), learner_address=args.learner,
                    max_steps=args.steps, actor_id=args.actor_id)
    except cli.USER_ERRORS as exc:
        return cli.fail("actor", exc)
    print(f"actor: {stats['env_steps']} steps, {stats['episodes']} episodes, "
          f"policy v{stats['policy_version_max']}, {stats['unacked_chunks']} chunks unacked", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
