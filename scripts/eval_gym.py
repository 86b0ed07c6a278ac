"""Trains on a Gymnasium environment through the whole asynchronous stack and writes its learning curve.

    python scripts/eval_gym.py Pendulum-v1 --steps 5000 --out runs/pendulum.json
    python scripts/eval_gym.py CartPole-v1 --steps 20000 --out runs/cartpole.json --pixels
    python scripts/eval_gym.py Pendulum-v1 --steps 5000 --out p.json --config configs/gym_pendulum.yaml \\
        --set learner.batch_size=32

The session config is the base config (--config, else a built-in one with the small_cpu learner profile) with
the robot made a ``gym`` driver for ENV_ID (``--pixels``: 64x64 rendered frames instead of the
environment's own observation), no cameras, the ``gym`` task and lockstep pacing; --set overrides
apply last. ``robotd train`` then runs daemon, actor and learner for N environment steps (robotd's
steps: one per observation, a reset included, as ``--steps`` counts them).

Afterwards every finished episode (one that the environment terminated or truncated, or that hit
task.episode_steps; not the one cut off by the end of the session) is read back from the session's
episode files, and FILE.json gets ``{"env", "steps", "returns", ...}``: ``steps[i]`` is the
cumulative number of robotd steps when episode i ended, ``returns[i]`` the sum of its rewards
(the environment's reward times task.args.reward_scale). Also written: ``lengths`` (environment
steps per episode), ``policy_versions`` (newest weights that acted in it; 0 = random prefill),
``logdir``, ``config`` and a few session figures. FILE.png plots the returns with a rolling mean.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robotd import config as config_module  # noqa: E402
from robotd.curves import finished_episodes, rolling_mean, run_session  # noqa: E402,F401

DEFAULT_BASE = {
    "control": {"rate_hz": 20, "action_deadline_ms": 45, "watchdog_s": 5.0},
    "task": {"episode_steps": 100_000},
    "actor": {"prefill_steps": 1000, "chunk_steps": 32},
    "learner": {"profile": "small_cpu", "min_replay_steps": 1000, "publish_every_updates": 5},
}


def session_config(env_id: str, base_path: str | None, pixels: bool) -> dict:
    """The config dict of the session: the base with a gym robot for ``env_id``, the gym task and lockstep pacing."""
    if base_path:
        data = yaml.safe_load(Path(base_path).read_text()) or {}
        if not isinstance(data, dict):
            raise config_module.ConfigError(f"config file {base_path!r} is not a YAML mapping")
    else:
        data = json.loads(json.dumps(DEFAULT_BASE))
    robot = data.setdefault("robot", {})
    args = dict(robot.get("args") or {}) if robot.get("driver") == "gym" else {}
    args["env_id"] = env_id
    if pixels:
        args.update(pixels=True, vector_obs=False)
    robot.update(name=robot.get("name", "env"), driver="gym", args=args)
    data["cameras"] = []
    # A short lockstep session can end before the learner is up: let the actor wait for its acks.
    data.setdefault("actor", {}).setdefault("drain_timeout_s", 60.0)
    data.setdefault("control", {})["pacing"] = "lockstep"
    task = data.setdefault("task", {})
    if task.get("name") != "gym":
        task["name"] = "gym"
        task.pop("args", None)
    return data


REFERENCE_DIR = ROOT.parent / "shared" / "refs" / "dreamerv3-scores"


def reference_curve(spec: str, directory: Path = REFERENCE_DIR) -> dict:
    """A published curve named ``SUITE:TASK[:METHOD]`` (e.g. ``dmc_proprio:dmc_walker_walk``), averaged over seeds.

    The files are gzipped JSON lists of ``{task, method, seed, xs, ys}`` named
    ``SUITE-METHOD.json.gz``; METHOD defaults to dreamerv3. Seeds are resampled onto the first
    seed's steps before averaging. Returns ``{"name", "steps", "returns", "seeds"}``.
    """
    import gzip

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--reference {spec!r} is not SUITE:TASK[:METHOD], e.g. dmc_proprio:dmc_walker_walk")
    suite, task = parts[0], parts[1]
    method = parts[2] if len(parts) == 3 else "dreamerv3"
    path = directory / f"{suite}-{method}.json.gz"
    if not path.exists():
        known = sorted(p.name.removesuffix(".json.gz").replace("-", ":") for p in directory.glob("*.json.gz"))
        raise ValueError(f"--reference {spec!r}: no file {path}; known suite:method pairs: {', '.join(known) or 'none'}")
    runs = [run for run in json.loads(gzip.decompress(path.read_bytes())) if run["task"] == task]
    if not runs:
        tasks = sorted({run["task"] for run in json.loads(gzip.decompress(path.read_bytes()))})
        raise ValueError(f"--reference {spec!r}: no task {task!r} in {path.name}; tasks: {', '.join(tasks)}")
    steps = np.asarray(runs[0]["xs"], dtype=float)
    curves = [np.interp(steps, np.asarray(run["xs"], float), np.asarray(run["ys"], float)) for run in runs]
    return {"name": f"{method} {task}", "steps": steps.tolist(), "returns": np.mean(curves, axis=0).tolist(),
            "seeds": len(runs)}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps, returns = result["steps"], result["returns"]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    if returns:
        window = max(1, min(20, len(returns) // 5))
        axes.plot(steps, returns, ".", alpha=0.4, label="episode return")
        axes.plot(steps, rolling_mean(returns, window), "-", linewidth=2, label=f"rolling mean ({window} episodes)")
        learned = [step for step, version in zip(steps, result.get("policy_versions", [])) if version > 0]
        if learned:
            axes.axvline(learned[0], color="grey", linestyle=":", label="first episode with learned weights")
    else:
        axes.text(0.5, 0.5, "no finished episode", ha="center", va="center", transform=axes.transAxes)
    reference = result.get("reference")
    if reference:
        last = max(result["steps"] or [reference["steps"][-1]])
        shown = [(x, y) for x, y in zip(reference["steps"], reference["returns"]) if x <= last] or \
            list(zip(reference["steps"], reference["returns"]))
        axes.plot(*zip(*shown), "--", color="black", label=f"published {reference['name']} ({reference['seeds']} seeds)")
    if returns or reference:
        axes.legend(loc="best")
    axes.set_xlabel("environment steps (robotd)")
    axes.set_ylabel("episode return")
    axes.set_title(f"{result['env']}: {len(returns)} episodes, {result.get('env_steps', 0)} steps")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_id", help="Gymnasium environment id, e.g. Pendulum-v1")
    parser.add_argument("--steps", type=int, required=True, help="environment steps to run")
    parser.add_argument("--out", required=True, help="JSON file for the learning curve (the plot goes next to it)")
    parser.add_argument("--config", default=None, help="base config (default: a built-in config with the small_cpu learner profile)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, applied last")
    parser.add_argument("--pixels", action="store_true", help="observe 64x64 rendered frames instead of the state")
    parser.add_argument("--logdir", default=None, help="session directory (default runs/eval-ENV-TIME)")
    parser.add_argument("--reference", default=None, metavar="SUITE:TASK[:METHOD]",
                        help="overlay a published curve from ../shared/refs/dreamerv3-scores, "
                             "e.g. dmc_proprio:dmc_walker_walk")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    out = Path(args.out)
    try:
        reference = reference_curve(args.reference) if args.reference else None
    except (OSError, ValueError) as exc:
        print(f"eval_gym: error: {exc}", file=sys.stderr)
        return 2
    logdir = Path(args.logdir or ROOT / "runs" / f"eval-{args.env_id}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        data = session_config(args.env_id, args.config, args.pixels)
    except (OSError, config_module.ConfigError) as exc:
        print(f"eval_gym: error: {exc}", file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"eval-{args.env_id}-", delete=False) as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
        config_path = Path(handle.name)
    try:
        try:
            config = config_module.load(config_path, args.overrides)          # fail here, in one line, not in a child
        except (config_module.ConfigError, ValueError) as exc:
            print(f"eval_gym: error: {exc}", file=sys.stderr)
            return 2
        argv = [sys.executable, "-m", "robotd", "train", str(config_path), "--steps", str(args.steps),
                "--logdir", str(logdir)]
        for override in args.overrides:
            argv += ["--set", override]
        started = time.monotonic()
        code = run_session(argv, ROOT)
        wall_s = time.monotonic() - started
    finally:
        config_path.unlink(missing_ok=True)
    episodes = finished_episodes(logdir) if (logdir / "episodes").is_dir() else []
    try:
        summary = json.loads((logdir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    result = {"env": args.env_id, "steps": [e["end_step"] for e in episodes], "returns": [e["return"] for e in episodes],
              "lengths": [e["length"] for e in episodes], "policy_versions": [e["policy_version"] for e in episodes],
              "pixels": args.pixels, "logdir": str(logdir), "config": str(logdir / "config.yaml"),
              "prefill_steps": config.actor.prefill_steps, "env_steps": summary.get("env_steps", 0),
              "learner_updates": summary.get("learner_updates", 0),
              "steps_per_s": summary.get("control_rate_hz", 0.0), "wall_s": round(wall_s, 1),
              "train_exit_code": code}
    if reference:
        result["reference"] = reference
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    tail = result["returns"][-10:]
    mean_text = f", mean of the last {len(tail)} returns {np.mean(tail):.1f}" if tail else ""
    print(f"eval_gym: {args.env_id}: {len(episodes)} finished episodes in {result['env_steps']} steps "
          f"({result['steps_per_s']:.0f} steps/s, {result['learner_updates']} learner updates){mean_text}; "
          f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    if code != 0:
        print(f"eval_gym: robotd train exited with code {code} (logs in {logdir / 'logs'})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
