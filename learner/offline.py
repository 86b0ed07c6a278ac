"""``robotd replay LOGDIR [LOGDIR ...] --updates N``: train a learner offline from recorded sessions.

No daemon, no actor, no network: every usable episode of the given session directories goes into
a replay buffer (the learner's own ``ReplayBuffer``, in this process), and the learner's trainer
runs N updates on it. The result is a new session directory like an online learner's:
``config.yaml``, ``checkpoints/latest.pt`` (resumable, and the starting point of an online session
with ``robotd train ... --init PATH``), ``metrics/learner.jsonl`` with the same metrics as online
training, world-model report GIFs in ``reports/``, ``stats/learner.json`` and ``replay.json``
(sources, episodes used and left out with the reasons, the world-model loss on a fixed evaluation
batch before and after).

Episodes flagged for timing quality (``quality:`` flags, see robotd/quality.py) are left out
unless ``--include-flagged``; episodes whose steps do not match the first one's keys, shapes and
dtypes, and unreadable files, are left out with the reason.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from learner.replay import ReplayBuffer
from learner.trainer import CHECKPOINT_FILE, Trainer, read_checkpoint, resolve_device
from robotd import cli, session, steps
from robotd.config import Config, available_cores, save
from robotd.episodes import read_episode
from robotd.metrics import MetricsWriter
from robotd.quality import quality_flags

log = logging.getLogger("learner.offline")

REPLAY_SUMMARY = "replay.json"
EVAL_SEED = 12345


class ReplayError(ValueError):
    """Recorded sessions that cannot be trained on; the message names what and why."""


def episode_spec(data: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The step spec of recorded step arrays: key -> (shape per step, dtype name)."""
    return {key: (tuple(value.shape[1:]), value.dtype.name) for key, value in data.items()}


def collect(logdirs: list[str | Path], *, include_flagged: bool = False):
    """Reads every episode of the given sessions. Returns (spec, [(path, EpisodeData)], [(path, reason)])."""
    used, left_out, spec = [], [], None
    for logdir in logdirs:
        root = Path(logdir)
        paths = sorted((root / session.EPISODES).glob("*.h5"))
        if not root.is_dir() or not paths:
            raise ReplayError(f"{str(logdir)!r} holds no recorded episodes (no {session.EPISODES}/*.h5): "
                              f"give a session directory that robotd train wrote")
        for path in paths:
            try:
                episode = read_episode(path)
            except (ValueError, OSError) as exc:
                left_out.append((str(path), f"unreadable: {exc}"))
                continue
            flagged = quality_flags(episode.attrs.get("flags", ()))
            if flagged and not include_flagged:
                left_out.append((str(path), "; ".join(flagged)))
                continue
            n_steps = len(episode.steps.get(steps.REWARD, ()))
            if n_steps == 0:
                left_out.append((str(path), "no steps"))
                continue
            if spec is None:
                spec = episode_spec(episode.steps)
            problem = steps.check_against(spec, dict(episode.steps), n_steps)
            if problem:
                left_out.append((str(path), f"does not match the first episode's steps: {problem}"))
                continue
            used.append((path, episode))
    if not used:
        reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in left_out[:3])
        raise ReplayError(f"no usable episode in {', '.join(map(str, logdirs))} ({reasons}); "
                          f"--include-flagged takes flagged ones")
    return spec, used, left_out


def fill_replay(used, capacity_steps: int, seed: int) -> ReplayBuffer:
    """A replay buffer holding every used episode, episodes of one recorded stream joined where consecutive."""
    replay = ReplayBuffer(capacity_steps, seed)
    for index, (path, episode) in enumerate(used):
        data, attrs = episode.steps, episode.attrs
        stream_steps = data.get(steps.STREAM_STEP)
        if stream_steps is not None and len(stream_steps) and np.all(np.diff(stream_steps) == 1):
            stream, start = f"{path.parent.parent}/{attrs.get('actor_id')}/{attrs.get('stream')}", int(stream_steps[0])
        else:
            stream, start = f"{path}#{index}", 0
        replay.add(stream, start, {key: np.asarray(value) for key, value in data.items()})
    return replay


def is_discrete(used) -> bool:
    """True when every recorded action is one-hot (a discrete robot's)."""
    for _, episode in used:
        action = np.asarray(episode.steps[steps.ACTION])
        if action.ndim != 2 or not np.all((action == 0) | (action == 1)) or not np.all(action.sum(-1) == 1):
            return False
    return True


class Progress:
    """A progress bar on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.started = self.last = time.monotonic()

    def update(self, done: int, loss: float | None) -> None:
        now = time.monotonic()
        if done < self.total and now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        rate = done / max(1e-9, now - self.started)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * done / max(1, self.total))
        loss_text = "" if loss is None else f"  world-model loss {loss:.3f}"
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} updates  {rate:.1f}/s  "
                f"eta {eta:.0f} s{loss_text}")
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)
        if self.tty and done >= self.total:
            print(file=self.stream)


def run(config: Config, logdirs: list[str], *, updates: int, out: str, init: str | None = None,
        include_flagged: bool = False, device: str | None = None) -> dict:
    """Trains ``updates`` updates on the recorded sessions; returns the summary written to replay.json."""
    learner = config.learner
    checkpoint = Path(out) / session.CHECKPOINTS / CHECKPOINT_FILE
    if session.holds_session(out) or checkpoint.exists():
        go_on = f" (to go on from its checkpoint, add --init {checkpoint})" if checkpoint.is_file() else ""
        raise ReplayError(f"--logdir {out!r} already holds a session: choose a new directory{go_on}")
    spec, used, left_out = collect(logdirs, include_flagged=include_flagged)
    for path, reason in left_out:
        log.warning("left out %s: %s", path, reason)
    replay = fill_replay(used, learner.replay_capacity_steps, config.seed)
    if not replay.can_sample(learner.batch_length):
        raise ReplayError(f"no recorded stretch of {learner.batch_length} consecutive steps: lower "
                          f"learner.batch_length (--set learner.batch_length=N)")
    root = session.prepare(out)
    save(config, root / session.CONFIG)
    # Nothing else runs beside offline training: auto (0) takes every core.
    torch.set_num_threads(learner.threads or available_cores())
    device = resolve_device(device or learner.device)
    init_state = None
    if init:
        init_state = read_checkpoint(Path(init))
        if init_state is None:
            raise ReplayError(f"--init {init!r}: no such checkpoint file")
    discrete = bool(init_state["action_discrete"]) if init_state else is_discrete(used)
    trainer = Trainer(config, spec, device, root, action_discrete=discrete)
    version = trainer.start_from(init_state, f"--init {init!r}") if init_state else 0
    rng_state = replay.rng.bit_generator.state
    replay.rng = np.random.default_rng(EVAL_SEED)
    eval_batch = trainer.prepare(replay.sample(learner.batch_size, learner.batch_length))
    replay.rng.bit_generator.state = rng_state
    before, _ = trainer.report(eval_batch)
    metrics = MetricsWriter(root, process="learner")
    progress = Progress(updates)
    started = last_metrics = last_checkpoint = last_report = time.monotonic()
    window_start, window_updates, updates_per_s = started, 0, 0.0
    replay_steps = replay.stats()["replay_steps"]
    log.info("replay: %d episodes (%d steps) from %s; %d left out; %d updates on %s",
             len(used), replay_steps, ", ".join(map(str, logdirs)), len(left_out), updates, device)
    try:
        for done in range(1, updates + 1):
            batch = replay.sample(learner.batch_size, learner.batch_length, context=trainer.replay_context)
            result = trainer.train(batch)
            writeback = trainer.latent_writeback()
            if writeback is not None:
                replay.update_latents(*writeback)
            window_updates += 1
            now = time.monotonic()
            if now - window_start >= 2.0 or done == updates:
                updates_per_s = window_updates / max(1e-9, now - window_start)
                window_start, window_updates = now, 0
            if now - last_metrics >= 2.0 or done == updates:
                metrics.write(trainer.updates, {**result, "updates_per_s": updates_per_s, "weights_version": version,
                                                "ingested_steps": replay_steps})
                last_metrics = now
            if learner.report_every_s and now - last_report >= learner.report_every_s:
                trainer.write_report(batch, metrics)
                last_report = time.monotonic()          # the period runs from the report's end
            if now - last_checkpoint >= learner.checkpoint_every_s:
                trainer.save(version)
                last_checkpoint = now
            progress.update(done, float(result.get("loss/world_model", float("nan"))))
    finally:
        if trainer.updates > 0:
            trainer.save(version + 1)
        metrics.close()
    after, _ = trainer.report(eval_batch)
    trainer.write_report(eval_batch)
    wall_s = time.monotonic() - started
    summary = {
        "sources": [str(Path(d).resolve()) for d in logdirs], "episodes_used": len(used),
        "steps": int(replay_steps), "left_out": [{"path": p, "reason": r} for p, r in left_out],
        "updates": updates, "total_updates": trainer.updates, "init": str(init) if init else None,
        "device": device, "wall_s": round(wall_s, 1), "updates_per_s": round(updates / max(wall_s, 1e-9), 2),
        "eval_before": {k: v for k, v in before.items() if k.startswith("report/loss/")},
        "eval_after": {k: v for k, v in after.items() if k.startswith("report/loss/")},
        "checkpoint": str(root / session.CHECKPOINTS / CHECKPOINT_FILE),
    }
    session.write_json(root / REPLAY_SUMMARY, summary)
    session.write_stats(root, "learner", {"learner_updates": trainer.updates, "replayed_steps": trainer.replayed_steps,
                                          "published_version": version + 1, "device": device,
                                          "parameters": trainer.parameter_count(), "last_losses": trainer.last_metrics,
                                          "replay_steps": int(replay_steps)})
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``robotd replay``."""
    parser = cli.program_parser(
        "robotd replay",
        "Train a learner offline from recorded sessions: no daemon, no actor, no network. Every usable episode "
        "of the LOGDIRs goes into replay and the learner runs N updates on it; the new session directory gets "
        "checkpoints/latest.pt (the start of an online session with robotd train --init), metrics and "
        "replay.json (episodes used and left out, the world-model loss before and after).",
        ("1000 updates on two recorded sessions",
         "robotd replay runs/demo runs/demo2 --updates 1000 --logdir runs/offline"),
        ("then go on online from its checkpoint",
         "robotd train configs/mock_arm.yaml --init runs/offline/checkpoints/latest.pt --logdir runs/online"))
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR", help="recorded session directories")
    parser.add_argument("--updates", type=int, required=True, help="how many learner updates to run")
    parser.add_argument("--logdir", default=None, help="the new session directory (default: runs/replay-<date>-<time>)")
    parser.add_argument("--config", default=None,
                        help="config for the learner (default: the first LOGDIR's config.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set learner.batch_size=16 (repeatable)")
    parser.add_argument("--init", default=None,
                        help="start from this checkpoint, e.g. LOGDIR/checkpoints/latest.pt (default: a fresh model)")
    parser.add_argument("--include-flagged", action="store_true", help="train on episodes flagged for timing too")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="torch device (default: learner.device)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging("replay")
    if args.updates < 1:
        return cli.fail("replay", ValueError(f"--updates {args.updates} must be at least 1"))
    config_path = args.config or str(Path(args.logdirs[0]) / session.CONFIG)
    out = args.logdir or str(Path("runs") / f"replay-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        from robotd import config as config_module
        config = config_module.load(config_path, args.overrides)
        summary = run(config, args.logdirs, updates=args.updates, out=out, init=args.init,
                      include_flagged=args.include_flagged, device=args.device)
    except (*cli.USER_ERRORS, ReplayError) as exc:
        return cli.fail("replay", exc)
    before = summary["eval_before"].get("report/loss/world_model")
    after = summary["eval_after"].get("report/loss/world_model")
    for item in summary["left_out"]:
        print(f"left out {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"robotd replay: {summary['updates']} updates on {summary['episodes_used']} episodes ({summary['steps']} "
          f"steps) in {summary['wall_s']} s; world-model loss on the evaluation batch {before:.3f} -> {after:.3f}; "
          f"{len(summary['left_out'])} episodes left out; checkpoint {summary['checkpoint']}", file=sys.stderr)
    print(json.dumps({"logdir": out, **{k: summary[k] for k in ("episodes_used", "steps", "updates")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
