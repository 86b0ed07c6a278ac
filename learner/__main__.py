"""``python -m learner`` (also ``robotd learner``): the learner process."""
from __future__ import annotations

import argparse
import sys

from robotd import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robotd learner", description="Train from streamed robot experience.")
    cli.add_common(parser)
    parser.add_argument("--bind", default=None, help="experience address to bind, e.g. tcp://0.0.0.0:5555")
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster (auto, host:port or ray://host:port) with Ray's token auth: "
                        "the token in learner.ray_token_file or RAY_AUTH_TOKEN")
    args = parser.parse_args(argv)
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
        from learner.main import run
        stats = run(config, logdir=args.logdir or cli.default_logdir(args.config))
    except cli.USER_ERRORS as exc:
        return cli.fail("learner", exc)
    print(f"learner: {stats['learner_updates']} updates, {stats['ingested_steps']} steps ingested, "
          f"weights v{stats['published_version']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
