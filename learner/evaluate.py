"""``robotd eval LOGDIR``: how well a session's policy does, on fixed episodes, beside a random policy.

The session's own config (``LOGDIR/config.yaml``) and newest checkpoint (``LOGDIR/checkpoints/latest.pt``)
are loaded in this process; the simulated robot and task are stepped with ``robotd.gym_envs.RobotEnv``
(the same drivers, safety layer and task as a session, in lockstep), so no daemon, actor or learner runs::

    python -m learner.evaluate LOGDIR [--episodes 10] [--seed 1000000] [--explore] [--no-random]
                                      [--checkpoint PATH] [--set KEY=VALUE] [--json PATH]

Episode ``i`` is drawn with seed ``seed + i`` (start and target of the task), so every policy meets the same
episodes: the learned policy acts greedily (the mode of its action distribution; ``--explore`` samples it
as the actor does while training), and a uniform-random policy plays the same seeds for comparison. It
prints one line per episode and a summary, and writes the figures as JSON (default
``LOGDIR/eval/eval-<updates>.json``). Simulated devices only: a config that drives hardware is refused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from robotd import session
from robotd.cli import program_parser

DEFAULT_SEED = 1_000_000          # far from the seeds a session draws its own episodes with


def load_policy(logdir: Path, checkpoint_path: Path, env) -> tuple[object, dict]:
    """The Policy of ``checkpoint_path``, built for ``env``'s observations; and the checkpoint's facts."""
    import torch

    from learner.dreamer import Dreamer, Policy
    from learner.sizes import model_config
    from learner.trainer import read_checkpoint
    from robotd import steps

    state = read_checkpoint(checkpoint_path)
    if state is None:
        raise ValueError(f"{checkpoint_path}: no checkpoint: a session writes one every learner.checkpoint_every_s "
                         f"and at its end; train first (robotd train ... --logdir {logdir})")
    model = model_config(env.config.learner.model)
    discrete = bool(state.get("action_discrete", False))
    agent = Dreamer(env.obs_spec, env.action_dim, model, discrete=discrete)
    def observations(spec) -> dict:
        return {key: (tuple(shape), np.dtype(dtype).name) for key, (shape, dtype) in spec.items()
                if key.startswith(steps.OBS_PREFIX)}

    here = observations(steps.step_spec(env.obs_spec, env.action_dim, []))
    mismatch = steps.spec_mismatch(here, observations(state["spec"]))
    if mismatch:
        raise ValueError(f"{checkpoint_path} was trained on other observations ({mismatch}) than this config "
                         f"gives: evaluate with the session's own config")
    agent.load_checkpoint(state["agent"])
    policy = Policy(env.obs_spec, env.action_dim, model, discrete=discrete)
    policy.load(agent.policy_state_dict())
    torch.set_num_threads(1)          # batch-1 acting gains nothing from threads
    return policy, {"updates": int(state["agent"].get("updates", 0)), "version": int(state.get("version", 0))}


def run_episode(env, seed: int, choose) -> dict:
    """One episode of ``env`` drawn with ``seed``, actions from ``choose(obs, is_first)``; its figures."""
    obs, info = env.reset(seed=seed)
    total, steps, is_first, success = 0.0, 0, True, bool(info.get("is_success", False))
    while True:
        action = choose(obs, is_first)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        is_first = False
        success = bool(info.get("is_success", False))
        if terminated or truncated:
            return {"seed": seed, "return": round(total, 4), "steps": steps, "success": success}


def evaluate(logdir: str | Path, *, episodes: int = 10, seed: int = DEFAULT_SEED, explore: bool = False,
             random: bool = True, checkpoint: str | Path | None = None, overrides=(), out=print) -> dict:
    """Evaluates a session's checkpoint; returns the figures (what ``--json`` writes)."""
    from robotd.gym_envs import RobotEnv

    logdir = Path(logdir)
    config_path = logdir / session.CONFIG
    if not config_path.is_file():
        raise ValueError(f"{logdir}: no {session.CONFIG}: pass the directory of a robotd train session")
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"--episodes {episodes!r} must be a positive integer, e.g. --episodes 10")
    checkpoint_path = Path(checkpoint) if checkpoint else logdir / session.CHECKPOINTS / "latest.pt"
    env = RobotEnv(config_path, overrides=list(overrides))
    try:
        policy, facts = load_policy(logdir, checkpoint_path, env)
        seeds = [seed + index for index in range(episodes)]
        started = time.monotonic()

        def learned(obs, is_first):
            action = policy.act(obs, is_first, explore=explore)
            return int(np.argmax(action)) if env.action_discrete else action

        results = {"policy": [run_episode(env, s, learned) for s in seeds]}
        if random:
            rng = np.random.default_rng(seed)
            results["random"] = [run_episode(env, s, lambda obs, is_first: env.action_space.sample()
                                              if env.action_discrete else rng.uniform(-1.0, 1.0, env.action_dim)
                                              .astype(np.float32)) for s in seeds]
    finally:
        env.close()
    summary = {name: {"mean_return": float(np.mean([e["return"] for e in rows])),
                      "success_rate": float(np.mean([e["success"] for e in rows]))}
               for name, rows in results.items()}
    report = {"logdir": str(logdir), "checkpoint": str(checkpoint_path), **facts, "explore": explore,
              "seeds": seeds, "episodes": results, "summary": summary,
              "wall_s": round(time.monotonic() - started, 2)}
    mode = "sampled" if explore else "greedy"
    for index, row in enumerate(results["policy"]):
        line = f"episode {index:3d} seed {row['seed']}: return {row['return']:9.2f}  success {int(row['success'])}"
        if random:
            other = results["random"][index]
            line += f"   random: return {other['return']:9.2f}  success {int(other['success'])}"
        out(line)
    text = (f"policy ({mode}, {facts['updates']} updates, weights v{facts['version']}): mean return "
            f"{summary['policy']['mean_return']:.2f}, success {summary['policy']['success_rate']:.0%} over "
            f"{episodes} episodes")
    if random:
        text += (f"; random: {summary['random']['mean_return']:.2f}, success "
                 f"{summary['random']['success_rate']:.0%}")
    out(text)
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``robotd eval``."""
    parser = program_parser(
        "robotd eval",
        "How well a simulated session's policy does: its newest checkpoint plays fixed episodes (episode i drawn "
        "with seed SEED + i) greedily, and a uniform-random policy plays the same ones for comparison. In this "
        "process, in lockstep: no daemon, actor or learner runs. Simulated devices only.",
        ("10 episodes of a session's policy beside a random one", "robotd eval runs/reach"),
        ("50 episodes, sampling actions as in training, the figures to a file of your own",
         "robotd eval runs/reach --episodes 50 --explore --json runs/reach-eval.json"))
    parser.add_argument("logdir", help="the session directory (robotd train --logdir)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per policy")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="episode i is drawn with seed SEED + i")
    parser.add_argument("--explore", action="store_true", help="sample actions as in training (default: greedy)")
    parser.add_argument("--no-random", action="store_true", help="skip the random policy on the same episodes")
    parser.add_argument("--checkpoint", default=None,
                        help="the policy's checkpoint (default: LOGDIR/checkpoints/latest.pt)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the session's config, e.g. --set task.episode_steps=100 (repeatable)")
    parser.add_argument("--json", default=None,
                        help="where to write the figures (default: LOGDIR/eval/eval-<updates>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``robotd eval`` (``python -m learner.evaluate``)."""
    args = build_parser().parse_args(argv)
    try:
        report = evaluate(args.logdir, episodes=args.episodes, seed=args.seed, explore=args.explore,
                          random=not args.no_random, checkpoint=args.checkpoint, overrides=args.overrides)
    except ImportError as exc:
        print(f"robotd eval: error: {exc}: the simulated robots need robotd[sim] (pip install -e '.[sim]')",
              file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"robotd eval: error: {exc}", file=sys.stderr)
        return 2
    path = Path(args.json) if args.json else Path(args.logdir) / "eval" / f"eval-{report['updates']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
