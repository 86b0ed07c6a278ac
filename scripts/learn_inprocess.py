#!/usr/bin/env python
"""The learner's algorithm on a Gymnasium environment in one process: no daemon, actor or network.

Collects with ``Policy`` (weights copied from ``Dreamer`` every ``--sync`` updates), trains with
``Dreamer.train_step`` on sequences from the learner's ``ReplayBuffer`` at a fixed train ratio,
and writes the learning curve as JSON. It isolates the algorithm and its settings from the
stack's timing, so a settings sweep takes minutes instead of a session each; the final
figures come from ``scripts/eval_gym.py`` through the whole stack.

    python scripts/learn_inprocess.py Pendulum-v1 --steps 5000 --seed 0 --out runs/p.json \
        --set deter=256 --set lr=1e-4 --batch 16 --length 32 --ratio 256
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learner.dreamer import Dreamer, Policy, preset  # noqa: E402
from learner.replay import ReplayBuffer  # noqa: E402


WATCHED = ("loss/world_model", "loss/reward", "actor/entropy", "imagination/value", "imagination/reward",
           "return_normaliser/scale", "optimiser/grad_norm")
"""Learner metrics printed with every finished episode."""


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_id")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="ModelConfig field override")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=256.0, help="replayed steps per collected step")
    parser.add_argument("--prefill", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sync", type=int, default=1, help="updates between policy weight copies")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON keyword arguments of gymnasium.make")
    args = parser.parse_args(argv)

    import gymnasium as gym

    import robotd.gym_envs  # noqa: F401 - registers the robotd/ ids

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    config = dataclasses.replace(preset(args.preset), **overrides)
    env = gym.make(args.env_id, **args.env_kwargs)
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict):
        obs_spec = {key: ((int(np.prod(sub.shape)),), "<f4") for key, sub in space.spaces.items()}
    else:
        obs_spec = {"state": ((int(np.prod(space.shape)),), "<f4")}

    def observe(raw) -> dict[str, np.ndarray]:
        if isinstance(raw, dict):
            return {key: np.asarray(raw[key], np.float32).reshape(-1) for key in obs_spec}
        return {"state": np.asarray(raw, np.float32).reshape(-1)}

    low, high = env.action_space.low, env.action_space.high
    action_dim = int(np.prod(env.action_space.shape))
    successes = []
    agent = Dreamer(obs_spec, action_dim, config)
    policy = Policy(obs_spec, action_dim, config)
    policy.load(agent.policy_state_dict())
    replay = ReplayBuffer(10**7, seed=args.seed)
    rng = np.random.default_rng(args.seed)

    returns, lengths, end_steps, updates_at, metrics_log = [], [], [], [], []
    chunk: dict[str, list] = {k: [] for k in (*obs_spec, "action", "reward", "is_first", "is_last", "is_terminal")}
    stream_step = 0
    obs, _ = env.reset(seed=args.seed)
    reward, first, episode_return, episode_length = 0.0, True, 0.0, 0
    replayed = 0.0
    t0 = time.monotonic()

    def write(complete: bool) -> None:
        """The curve so far as JSON (rewritten every few episodes, so a stopped run keeps what it learned)."""
        result = {"env": args.env_id, "steps": args.steps, "seed": args.seed, "complete": complete,
                  "returns": returns, "lengths": lengths, "end_steps": end_steps, "success": successes,
                  "updates_at": updates_at, "updates": agent.updates, "wall_s": time.monotonic() - t0,
                  "settings": {"preset": args.preset, "overrides": overrides, "batch": args.batch,
                               "length": args.length, "ratio": args.ratio, "prefill": args.prefill,
                               "threads": args.threads},
                  "metrics": metrics_log}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result))
    for step in range(args.steps):
        state = observe(obs)
        if step < args.prefill:
            action = rng.uniform(-1, 1, action_dim).astype(np.float32)
            policy.act(state, first)
        else:
            action = policy.act(state, first)
        env_action = low + (action + 1.0) * 0.5 * (high - low)
        next_obs, next_reward, terminated, truncated, info = env.step(env_action)
        last = terminated or truncated
        for key, value in (*state.items(), ("action", action), ("reward", np.float32(reward)),
                           ("is_first", first), ("is_last", False), ("is_terminal", False)):
            chunk[key].append(value)
        episode_return += float(next_reward)
        episode_length += 1
        reward, first, obs = float(next_reward), False, next_obs
        if last:
            # The final observation, with the last reward, closes the episode.
            state = observe(obs)
            successes.append(bool(info.get("is_success", False)))
            for key, value in (*state.items(), ("action", np.zeros(action_dim, np.float32)),
                               ("reward", np.float32(reward)), ("is_first", False), ("is_last", True),
                               ("is_terminal", bool(terminated))):
                chunk[key].append(value)
            arrays = {key: np.asarray(values) for key, values in chunk.items()}
            replay.add("s", stream_step, arrays)
            stream_step += len(arrays["reward"])
            chunk = {k: [] for k in chunk}
            returns.append(episode_return)
            lengths.append(episode_length)
            end_steps.append(step + 1)
            updates_at.append(agent.updates)
            recent = metrics_log[-1] if metrics_log else {}
            shown = " ".join(f"{key.split('/')[-1]} {recent[key]:.3g}" for key in WATCHED if key in recent)
            print(f"step {step + 1:6d}  return {episode_return:9.2f} {'S' if successes[-1] else ' '} "
                  f"updates {agent.updates:5d}  "
                  f"{time.monotonic() - t0:6.0f} s  {shown}", flush=True)
            if len(returns) % 5 == 0:
                write(complete=False)
            obs, _ = env.reset(seed=args.seed * 100003 + len(returns))
            reward, first, episode_return, episode_length = 0.0, True, 0.0, 0
        if step + 1 >= args.prefill and replay.can_sample(args.length):
            replayed_target = (step + 1 - args.prefill) * args.ratio
            while replayed < replayed_target:
                batch = replay.sample(args.batch, args.length, context=bool(config.replay_context))
                metrics = agent.train_step(batch)
                if config.replay_context:
                    deter, stoch = agent.last_posterior
                    replay.update_latents(batch["replay_keys"], deter, stoch, config.classes)
                replayed += args.batch * args.length
                if agent.updates % args.sync == 0:
                    policy.load(agent.policy_state_dict())
                if agent.updates % 25 == 0:
                    metrics_log.append({"update": agent.updates, "step": step + 1,
                                        **{k: round(float(v), 5) for k, v in metrics.items()}})
    write(complete=True)
    last10 = float(np.mean(returns[-10:])) if returns else float("nan")
    print(f"done: {agent.updates} updates in {time.monotonic() - t0:.0f} s; mean of last 10 returns {last10:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
