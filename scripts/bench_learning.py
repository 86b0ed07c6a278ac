"""Learning benchmark: the full asynchronous stack (DreamerV3) against SAC on the same simulated task.

    python scripts/bench_learning.py configs/sim_ur5_reach.yaml --steps 20000 --seeds 3 --out runs/reach.json
    python scripts/bench_learning.py configs/sim_ur5_pick_place.yaml --steps 40000 --seeds 1 \\
        --out runs/pick.json --reference ur5_dreamer.json

Per seed S (0 .. K-1) and method:

- ``dreamer``: ``robotd train CONFIG --steps N --set seed=S`` (daemon, actor and learner as in a
  real session); every finished episode is read back from the session's episode files.
- ``sac``: stable-baselines3 SAC (``pip install -e '.[bench]'``) on ``robotd.gym_envs.RobotEnv(CONFIG)``
  (same drivers, safety layer, task, observations and episode ends, in this process), with
  MultiInputPolicy on the task's dict observation (a CNN on the image when there is one, which makes
  every update far slower than on vectors). It starts learning after ``actor.prefill_steps`` random
  steps like the actor (``--sac-learning-starts`` changes that).

Both count environment steps as robotd does: one per observation, the first of each episode (the
reset) included, and both stop after N. FILE.json gets ``{"task", "config", "steps": N, "curves":
[{"method", "seed", "steps", "returns", "success", ...}], "summary"}`` with ``steps[i]`` the
cumulative step count at the end of episode i, its return and its success (the task's is_success at
the episode's last step). ``summary[method]``: per seed the step at which the success rate over the
last 10 episodes first reaches 90% (``steps_to_90``, None if never) and the final rolling return,
their means, and ``sac_over_dreamer_steps_to_90``. FILE.png plots return and success rate (rolling
mean over 10 episodes) against steps, one line per method and seed; ``--reference NAME`` overlays a
published DayDreamer curve (a JSON list of {task, method, seed, xs, ys} in ../shared/refs/daydreamer-scores
or a path).

The episode files do not record success, so for the stack it is recomputed from what they hold: from
the rewards for ur5_reach (reward above -success_radius_m, with success_bonus >= 0), ur5_pick_place (a
step paying at least half place_reward, i.e. a place event) and a1_stand / a1_walk (last reward above
the task's SUCCESS_REWARD), otherwise from the task's is_success on the last observation.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robotd import config as config_module  # noqa: E402
from robotd import steps as step_keys  # noqa: E402
from robotd import tasks  # noqa: E402
from robotd.curves import (finished_episodes, reward_per_step, rolling_mean, run_session, steps_to_rate,  # noqa: E402,F401
                           steps_to_return, window_means)

METHODS = ("dreamer", "sac")
WINDOW = 10
SUCCESS_RATE = 0.9
REFERENCE_DIR = ROOT.parent / "shared" / "refs" / "daydreamer-scores"


# ---------------------------------------------------------------------------------------------
def episode_success(task: tasks.Task, data: dict) -> bool:
    """The task's is_success at an episode's last step, as the actor recorded it (``is_success``); episode
    files written before that key existed fall back to the task's is_success on the last observation."""
    if step_keys.IS_SUCCESS in data:
        return bool(np.asarray(data[step_keys.IS_SUCCESS])[-1])
    obs = {key[len(step_keys.OBS_PREFIX):]: np.asarray(value[-1]) for key, value in data.items()
           if key.startswith(step_keys.OBS_PREFIX)}
    task.scene = {}
    try:
        return bool(task.is_success(obs))
    except (KeyError, ValueError):
        return False


def _mean_or_none(values: list) -> float | None:
    return float(np.mean(values)) if values and None not in values else None


def summarize(curves: list[dict], *, window: int = WINDOW, rate: float = SUCCESS_RATE,
              return_threshold: float | None = None) -> dict:
    """Per method: steps to a ``rate`` success rate over ``window`` episodes (and, with ``return_threshold``, to
    that rolling return), the final rolling return and success rate, wall time, learner updates and updates per
    second, per seed and averaged; plus the ratios SAC / dreamer of the mean steps to those thresholds."""
    summary: dict = {}
    for method in dict.fromkeys(curve["method"] for curve in curves):
        runs = [curve for curve in curves if curve["method"] == method]
        reached = [steps_to_rate(c["steps"], c["success"], rate=rate, window=window) for c in runs]
        finals = [float(rolling_mean(c["returns"], window)[-1]) if c["returns"] else None for c in runs]
        final_success = [float(np.mean(c["success"][-20:])) if c["success"] else None for c in runs]
        known = [value for value in finals if value is not None]
        entry = {
            "seeds": [c["seed"] for c in runs],
            "episodes": [len(c["returns"]) for c in runs],
            "steps_to_90": reached,
            "steps_to_90_mean": _mean_or_none(reached),
            "final_return": finals,
            "final_return_mean": float(np.mean(known)) if known else None,
            "final_success_rate_last20": final_success,
            "wall_s": [c.get("wall_s") for c in runs],
            "updates": [c.get("updates") for c in runs],
            "updates_per_s": [c.get("updates_per_s") for c in runs],
        }
        if return_threshold is not None:
            to_return = [steps_to_return(c["steps"], c["returns"], return_threshold, window=window) for c in runs]
            entry["steps_to_return"] = to_return
            entry["steps_to_return_mean"] = _mean_or_none(to_return)
        summary[method] = entry
    sac, dreamer = summary.get("sac", {}), summary.get("dreamer", {})
    ratio = None
    if sac.get("steps_to_90_mean") and dreamer.get("steps_to_90_mean"):
        ratio = sac["steps_to_90_mean"] / dreamer["steps_to_90_mean"]
    summary["sac_over_dreamer_steps_to_90"] = ratio
    if return_threshold is not None:
        summary["return_threshold"] = return_threshold
        summary["sac_over_dreamer_steps_to_return"] = (
            sac["steps_to_return_mean"] / dreamer["steps_to_return_mean"]
            if sac.get("steps_to_return_mean") and dreamer.get("steps_to_return_mean") else None)
    summary["window_episodes"] = window
    summary["success_rate"] = rate
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a few lines of text."""
    lines = []
    for method, entry in summary.items():
        if not isinstance(entry, dict):
            continue
        final = entry["final_return_mean"]
        lines.append(f"{method}: steps to {summary['success_rate']:.0%} success (rolling {summary['window_episodes']}) "
                     f"per seed {entry['steps_to_90']}, final rolling return "
                     f"{'n/a' if final is None else f'{final:.3f}'} over {entry['episodes']} episodes")
        if "steps_to_return" in entry:
            lines.append(f"{method}: steps to a rolling return of {summary['return_threshold']:g} per seed "
                         f"{entry['steps_to_return']}; wall {entry['wall_s']} s, updates {entry['updates']}")
    ratio = summary.get("sac_over_dreamer_steps_to_90")
    lines.append(f"SAC/dreamer steps to {summary['success_rate']:.0%}: {'n/a' if ratio is None else f'{ratio:.2f}'}")
    if "return_threshold" in summary:
        ratio = summary["sac_over_dreamer_steps_to_return"]
        lines.append(f"SAC/dreamer steps to a return of {summary['return_threshold']:g}: "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
def load_reference(name: str, directory: Path = REFERENCE_DIR) -> list[dict]:
    """Published runs (JSON list of {task, method, seed, xs, ys}) from a path or a file name in ``directory``."""
    path = Path(name)
    if not path.is_file():
        path = directory / name
    if not path.is_file():
        known = sorted(p.name for p in directory.glob("*.json")) if directory.is_dir() else []
        raise ValueError(f"--reference {name!r}: no such file here or in {directory}; known: {', '.join(known) or 'none'}")
    try:
        runs = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"--reference {name!r}: {path} is not JSON: give a JSON list of {{task, method, seed, xs, ys}}") \
            from None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and {"xs", "ys"} <= set(r) for r in runs):
        raise ValueError(f"--reference {name!r}: {path} is not a list of {{task, method, seed, xs, ys}}")
    return runs


def plot(result: dict, path: Path, reference: list[dict] | None = None, window: int = WINDOW) -> None:
    """Return and success rate (rolling means over ``window`` episodes) against steps; one line per method/seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per_step = any(curve.get("reward_per_step") for curve in result["curves"])
    figure, axes_all = plt.subplots(3 if per_step else 2, 1, figsize=(8, 10 if per_step else 7), dpi=100, sharex=True)
    top, bottom = axes_all[0], axes_all[1]
    colours = {"dreamer": "tab:blue", "sac": "tab:orange"}
    for curve in result["curves"]:
        if not curve["steps"]:
            continue
        colour = colours.get(curve["method"])
        label = f"{curve['method']} seed {curve['seed']}"
        top.plot(curve["steps"], rolling_mean(curve["returns"], window), "-", color=colour, alpha=0.8, label=label)
        bottom.plot(curve["steps"], rolling_mean(np.asarray(curve["success"], float), window), "-", color=colour,
                    alpha=0.8, label=label)
    if per_step:
        for curve in result["curves"]:
            if curve.get("reward_per_step"):
                axes_all[2].plot(curve["window_steps"], curve["reward_per_step"], "-", color=colours.get(curve["method"]),
                                 alpha=0.8, label=f"{curve['method']} seed {curve['seed']}")
        axes_all[2].set_ylabel(f"reward per step ({result.get('reward_window', '?')}-step windows)")
    last = max((curve["steps"][-1] for curve in result["curves"] if curve["steps"]), default=None)
    for run in reference or []:
        shown = [(x, y) for x, y in zip(run["xs"], run["ys"]) if last is None or x <= last] or \
            list(zip(run["xs"], run["ys"]))[:1]
        label = f"published {run.get('method', '?')} {run.get('task', '?')} seed {run.get('seed', '?')}"
        top.plot(*zip(*shown), "--", color="black", alpha=0.6, label=label)
    top.set_ylabel(f"episode return (rolling {window})")
    bottom.set_ylabel(f"success rate (rolling {window})")
    bottom.set_ylim(-0.05, 1.05)
    axes_all[-1].set_xlabel("environment steps (robotd: one per observation)")
    top.set_title(f"{result['task']}: {result['steps']} steps per run")
    for axes in axes_all:
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
def run_dreamer(config_path: str, overrides: list[str], seed: int, steps: int, logdir: Path, task_factory,
                keep: bool = True, minutes: float | None = None, reward_window: int | None = None) -> dict:
    """One ``robotd train`` session (``--minutes`` too when given); its finished episodes as a curve (``logdir``
    recorded when ``keep``)."""
    argv = [sys.executable, "-m", "robotd", "train", str(config_path), "--steps", str(steps), "--logdir", str(logdir)]
    if minutes is not None:
        argv += ["--minutes", f"{minutes:g}"]
    for override in [*overrides, f"seed={seed}"]:
        argv += ["--set", override]
    started = time.monotonic()
    code = run_session(argv, ROOT)
    wall_s = time.monotonic() - started
    task = task_factory(seed)
    episodes = finished_episodes(logdir, lambda data: episode_success(task, data)) \
        if (logdir / "episodes").is_dir() else []
    try:
        updates = int(json.loads((logdir / "summary.json").read_text()).get("learner_updates") or 0)
    except (OSError, ValueError):
        updates = None
    windows = {}
    if reward_window and (logdir / "episodes").is_dir():
        per_step = reward_per_step(logdir, reward_window)
        windows = {"window_steps": per_step["steps"], "reward_per_step": per_step["reward_per_step"],
                   "window_wall_s": per_step["wall_s"]}
    return {"method": "dreamer", "seed": seed, "steps": [e["end_step"] for e in episodes], **windows,
            "wall_end_s": _wall_ends(episodes),
            "returns": [e["return"] for e in episodes], "success": [e["success"] for e in episodes],
            "policy_versions": [e["policy_version"] for e in episodes], "wall_s": round(wall_s, 1),
            "updates": updates, "updates_per_s": round(updates / wall_s, 2) if updates and wall_s > 0 else None,
            "logdir": str(logdir) if keep else None, "exit_code": code}


def _wall_ends(episodes: list[dict]) -> list[float | None]:
    """Seconds from the session's first recorded tick to each episode's last (host monotonic clock)."""
    starts = [e["start_tick_ns"] for e in episodes if "start_tick_ns" in e]
    if not starts:
        return [None] * len(episodes)
    first = min(starts)
    return [round((e["end_tick_ns"] - first) / 1e9, 2) if "end_tick_ns" in e else None for e in episodes]


def run_sac(config_path: str, overrides: list[str], seed: int, steps: int, *, learning_starts: int,
            buffer_size: int, threads: int, reward_window: int | None = None) -> dict:
    """SAC on RobotEnv(CONFIG) for ``steps`` robotd-counted steps; every finished episode as a curve."""
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from robotd.gym_envs import RobotEnv

    torch.set_num_threads(threads)
    env = RobotEnv(config_path, overrides=[*overrides, f"seed={seed}"])
    if env.action_discrete:
        env.close()
        raise ValueError(f"{config_path}: the action is discrete, which SAC cannot drive: use a continuous task")

    class Recorder(BaseCallback):
        """Counts robotd steps (step calls plus resets) and records each finished episode."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.episode_return = 0.0
            self.curve = {"steps": [], "returns": [], "success": []}
            self.protective_stops = 0
            self.rewards, self.at_steps = [], []

        def _on_step(self) -> bool:
            self.calls += 1
            self.episode_return += float(self.locals["rewards"][0])
            self.rewards.append(float(self.locals["rewards"][0]))
            self.at_steps.append(self.calls + len(self.curve["steps"]))     # robotd's 0-based step number
            if self.locals["dones"][0]:
                info = self.locals["infos"][0]
                self.curve["steps"].append(self.calls + 1 + len(self.curve["steps"]))
                self.curve["returns"].append(self.episode_return)
                self.curve["success"].append(bool(info.get("is_success", False)))
                self.protective_stops += int(bool(info.get("protective_stop", False)))
                self.episode_return = 0.0
            return self.calls + 1 + len(self.curve["steps"]) < steps

    recorder = Recorder()
    model = SAC("MultiInputPolicy", env, learning_starts=learning_starts, buffer_size=max(1, buffer_size),
                seed=seed, device="cpu", verbose=0)
    started = time.monotonic()
    model.learn(total_timesteps=steps, callback=recorder)
    wall_s = time.monotonic() - started
    env.close()
    windows = {}
    if reward_window and recorder.rewards:
        per_step = window_means(recorder.at_steps, recorder.rewards, reward_window)
        windows = {"window_steps": per_step["steps"], "reward_per_step": per_step["reward_per_step"]}
    return {"method": "sac", "seed": seed, **recorder.curve, **windows, "protective_stops": recorder.protective_stops,
            "wall_s": round(wall_s, 1),
            "steps_per_s": round(recorder.calls / wall_s, 1) if wall_s > 0 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a simulated config, e.g. configs/sim_ur5_reach.yaml")
    parser.add_argument("--steps", type=int, required=True, help="environment steps per run (robotd's count)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per method, seeds FIRST .. FIRST+K-1")
    parser.add_argument("--first-seed", type=int, default=0, metavar="FIRST", help="the first seed (default 0)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs already in --out whose method and seed this call does not run "
                             "(add seeds, or a longer SAC run, to an earlier benchmark)")
    parser.add_argument("--out", required=True, help="JSON file for the curves (the plot goes next to it)")
    parser.add_argument("--methods", default="dreamer,sac", help="comma-separated subset of dreamer,sac")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for both methods")
    parser.add_argument("--reference", default=None, metavar="FILE",
                        help="published curves to overlay, e.g. ur5_dreamer.json (from ../shared/refs/daydreamer-scores)")
    parser.add_argument("--logdir", default=None, help="where the stack's sessions go (default: a temporary directory)")
    parser.add_argument("--sac-learning-starts", type=int, default=None,
                        help="random steps before SAC learns (default: the config's actor.prefill_steps)")
    parser.add_argument("--return-threshold", type=float, default=None, metavar="R",
                        help="also report the steps to a rolling return of R (e.g. -250 for Pendulum-v1)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="also end each stack session after this much wall time (the issue's 60-minute curves); "
                             "--steps stays the upper bound")
    parser.add_argument("--reward-window", type=int, default=None, metavar="W",
                        help="also record and plot the mean reward per step over windows of W steps (for long or "
                             "reset-free episodes such as the A1 walk's 1,000)")
    parser.add_argument("--sac-buffer", type=int, default=100_000, help="SAC replay capacity (capped at --steps)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        parser.error(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.reward_window is not None and args.reward_window < 1:
        parser.error(f"--reward-window {args.reward_window}: give a window of at least one step")
    if args.first_seed < 0:
        parser.error(f"--first-seed {args.first_seed}: give a seed of 0 or more")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    out = Path(args.out)
    kept: list[dict] = []
    if args.merge and out.exists():
        try:
            earlier = json.loads(out.read_text())
        except ValueError:
            print(f"bench_learning: error: --merge: {out} is not JSON: remove it or drop --merge", file=sys.stderr)
            return 2
        if earlier.get("config") != str(args.config) or earlier.get("overrides", []) != args.overrides:
            print(f"bench_learning: error: --merge: {out} holds {earlier.get('config')} with overrides "
                  f"{earlier.get('overrides')}, not {args.config} with {args.overrides}: use another --out",
                  file=sys.stderr)
            return 2
        kept = [c for c in earlier.get("curves", [])
                if not (c.get("method") in methods and c.get("seed") in seeds)]
        for curve in kept:
            curve.setdefault("budget_steps", earlier.get("steps"))
    try:
        config = config_module.load(args.config, args.overrides)
        reference = load_reference(args.reference) if args.reference else None
    except (config_module.ConfigError, ValueError) as exc:
        print(f"bench_learning: error: {exc}", file=sys.stderr)
        return 2
    if reference:
        matching = [run for run in reference if str(run.get("task", "")).startswith(config.task.name)
                    or config.task.name.startswith(str(run.get("task", "")))]
        if not matching:
            print(f"bench_learning: note: {args.reference} has tasks {sorted({str(r.get('task')) for r in reference})}, "
                  f"not {config.task.name!r}: overlaid for scale only", file=sys.stderr)

    def task_factory(seed: int) -> tasks.Task:
        seeded = config_module.load(args.config, [*args.overrides, f"seed={seed}"])
        return tasks.make(seeded.task.name, robot=seeded.robot.name, cameras=[c.name for c in seeded.cameras],
                          episode_steps=seeded.task.episode_steps, seed=seed, args=seeded.task.args)

    out.parent.mkdir(parents=True, exist_ok=True)
    curves = []
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as scratch:
        root = Path(args.logdir) if args.logdir else Path(scratch)
        for seed in seeds:
            for method in methods:
                print(f"bench_learning: {method} seed {seed}, {args.steps} steps ...", file=sys.stderr)
                if method == "dreamer":
                    curve = run_dreamer(args.config, args.overrides, seed, args.steps, root / f"dreamer-seed{seed}",
                                        task_factory, keep=args.logdir is not None, minutes=args.minutes,
                                        reward_window=args.reward_window)
                else:
                    starts = config.actor.prefill_steps if args.sac_learning_starts is None else args.sac_learning_starts
                    try:
                        curve = run_sac(args.config, args.overrides, seed, args.steps, learning_starts=starts,
                                        buffer_size=min(args.sac_buffer, args.steps), threads=max(1, config.learner_threads()),
                                        reward_window=args.reward_window)
                    except ImportError as exc:
                        print(f"bench_learning: error: SAC needs stable-baselines3 ({exc}): pip install -e '.[bench]'",
                              file=sys.stderr)
                        return 2
                curve["budget_steps"] = args.steps
                curves.append(curve)
    curves = sorted([*kept, *curves], key=lambda c: (METHODS.index(c["method"]), c["seed"]))
    result = {"task": config.task.name, "config": str(args.config), "overrides": args.overrides,
              "steps": max(int(c.get("budget_steps") or args.steps) for c in curves), "curves": curves,
              "summary": summarize(curves, return_threshold=args.return_threshold)}
    if args.reward_window:
        result["reward_window"] = args.reward_window
    if reference:
        result["reference"] = args.reference
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"), reference)
    print(format_summary(result["summary"]), file=sys.stderr)
    print(f"bench_learning: wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    failed = [c for c in curves if c.get("exit_code", 0) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
