"""Learner throughput and actor latency of the DreamerV3 agent, per model size preset.

    python scripts/bench_learner.py --sizes 1m,12m --device cpu --out runs/bench_learner.json
    python scripts/bench_learner.py --sizes 12m --device cuda --dtype bfloat16 --compile on

What it measures, for each size preset (``learner.dreamer.preset``), each in its own process:

* ``params``: trainable parameters of the whole agent (world model, actor, critic; the slow
  critic is a frozen copy and is not counted). ``param_breakdown`` splits them per module when
  ``Dreamer.parameter_counts()`` exists.
* ``update_s``: median wall-clock seconds of one full ``Dreamer.train_step`` (world model +
  imagination + actor + critic, backward, three optimiser steps) on a random batch of
  ``--batch`` sequences of ``--length`` steps, over ``--updates`` timed updates that follow
  ``--warmup-updates`` untimed ones (first-call allocations and any ``torch.compile`` happen in
  the warm-up, so give it at least 1-2 updates when compiling). ``update_times_s`` lists them all.
* ``replayed_steps_per_s``: ``batch * length / update_s``, the replayed environment steps one
  learner can consume per second. Divide by the robot's control rate to get the largest
  replay ratio (updates x batch x length per collected step) the learner can keep up with.
* ``actor_step_ms_p50`` / ``_p99``: latency of one ``Policy.act`` call (batch 1, one CPU
  thread, on the CPU, as the actor process runs it), over ``--actor-steps`` calls after 20
  warm-up calls, with a new episode every 100 steps. Compare p99 to the control period: an
  actor step must fit in it with room to spare.
* ``peak_mem_mb``: on CPU the peak resident set of the benchmark process (``ru_maxrss``),
  which includes the Python interpreter and torch itself (a few hundred MB) besides the
  model, optimiser state, batch and activations; on CUDA ``torch.cuda.max_memory_allocated()``
  (tensors only, not the CUDA context or the allocator's cache). ``host_peak_mb`` is always the
  process's resident peak.

The batch is random (uniform uint8 images, normal vectors and rewards, uniform actions in
[-1, 1] or one-hot with ``--discrete``), so the losses are meaningless; the cost of an update
does not depend on the values. Timings depend on everything else running on the machine:
run it on an otherwise idle machine, and compare numbers only from the same machine.

A size that fails (out of memory, an error in the model) gets a ``failed: <reason>`` row
and an ``"error"`` entry in the JSON; the script exits non-zero only if every size failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT_MARKER = "BENCH_LEARNER_RESULT "
"""Prefix of the one line of JSON a worker prints on stdout (anything else it prints is ignored)."""

# ModelConfig field names that the model code may use for these settings; the first present wins.
DTYPE_FIELDS = ("precision", "dtype", "compute_dtype", "amp_dtype", "autocast_dtype", "param_dtype")
COMPILE_FIELDS = ("compile", "use_compile", "torch_compile")
DISCRETE_FIELDS = ("discrete", "discrete_actions", "discrete_action")
ACTOR_WARMUP_STEPS = 20


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny", help="comma-separated size presets, e.g. 1m,12m")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--updates", type=int, default=5, help="timed updates")
    parser.add_argument("--warmup-updates", type=int, default=2, help="untimed updates before timing")
    parser.add_argument("--actor-steps", type=int, default=500)
    parser.add_argument("--image", type=int, default=64, help="image side (HxWx3 uint8); 0 = no image")
    parser.add_argument("--vector", type=int, default=32, help="float32 vector size; 0 = no vector")
    parser.add_argument("--action", type=int, default=6, help="action size")
    parser.add_argument("--discrete", action="store_true", help="one-hot discrete actions")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0 = all cores)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="ModelConfig override (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-info", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.size_list = [size.strip() for size in args.sizes.split(",") if size.strip()]
    if not args.size_list:
        parser.error("--sizes names no size")
    for name in ("batch", "updates", "actor_steps", "action"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.length < 2:
        parser.error("--length must be at least 2")
    if args.warmup_updates < 0 or args.image < 0 or args.vector < 0 or args.threads < 0:
        parser.error("--warmup-updates, --image, --vector and --threads must not be negative")
    if args.image == 0 and args.vector == 0:
        parser.error("--image 0 and --vector 0 leave no observation")
    return args


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({_cores()} cores available)"


def _obs_spec(args: argparse.Namespace) -> dict:
    spec = {}
    if args.image:
        spec["image"] = ((args.image, args.image, 3), "|u1")
    if args.vector:
        spec["vector"] = ((args.vector,), "<f4")
    return spec


# --------------------------------------------------------------------------------------------
# Model configuration (runs in the subprocesses: it needs torch and learner.dreamer).


def _first_field(fields: dict, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in fields), None)


def _parse_override(field: dataclasses.Field, default, key: str, text: str):
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text}: not a bool (use true or false)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: not an int") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: not a float") from None
    if isinstance(default, str):
        return text
    if isinstance(default, tuple):
        try:
            return tuple(json.loads(text)) if text.strip().startswith("[") else tuple(
                int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"--set {key}={text}: not a list of ints (use e.g. 2,3,4,4)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _convert_setting(default, value: str, *, name: str):
    """A --dtype / --compile value in the type of the ModelConfig field it goes to."""
    import torch

    if name == "compile":
        if isinstance(default, bool):
            return value == "on"
        return value  # a str field: pass on/off through
    if isinstance(default, torch.dtype):
        return getattr(torch, value)
    return value


def build_config(args: argparse.Namespace, size: str):
    """``preset(size)`` with --set, --dtype, --compile and --discrete applied; returns (config, notes).

    ``notes`` has "dtype", "compile" (the config's resolved values, or "n/a" where ModelConfig
    has no such field) and "discrete" (how discrete actions are switched on, or None).
    Raises ValueError with a one-line message for an unknown size or a bad override.
    """
    from learner import dreamer as dreamer_module

    try:
        config = dreamer_module.preset(size)  # raises ValueError naming the known presets
    except ValueError as exc:
        message = " ".join(str(exc).split())
        raise ValueError(message if size in message else f"unknown size {size!r}: {message}") from None
    fields = {field.name: field for field in dataclasses.fields(config)}
    overrides = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key not in fields:
            raise ValueError(f"--set {key}: not a ModelConfig field; choose from {', '.join(sorted(fields))}")
        overrides[key] = _parse_override(fields[key], getattr(config, key), key, text)
    notes = {"dtype": "n/a", "compile": "n/a", "dtype_field": None, "compile_field": None, "discrete": None}
    dtype_field = _first_field(fields, DTYPE_FIELDS)
    if dtype_field and args.dtype != "auto" and dtype_field not in overrides:
        overrides[dtype_field] = _convert_setting(getattr(config, dtype_field), args.dtype, name="dtype")
    compile_field = _first_field(fields, COMPILE_FIELDS)
    if compile_field and args.compile != "auto" and compile_field not in overrides:
        overrides[compile_field] = _convert_setting(getattr(config, compile_field), args.compile, name="compile")
    discrete_field = _first_field(fields, DISCRETE_FIELDS)
    if args.discrete and discrete_field:
        overrides[discrete_field] = True
        notes["discrete"] = f"ModelConfig.{discrete_field}"
    config = dataclasses.replace(config, **overrides)
    if dtype_field:
        notes["dtype"], notes["dtype_field"] = str(getattr(config, dtype_field)), dtype_field
    if compile_field:
        notes["compile"], notes["compile_field"] = getattr(config, compile_field), compile_field
    if args.discrete and not discrete_field:
        import inspect

        if "discrete" in inspect.signature(dreamer_module.Dreamer).parameters:
            notes["discrete"] = "Dreamer(discrete=True)"
        else:
            raise ValueError("--discrete: this model has no discrete-action support "
                             "(no 'discrete' parameter of Dreamer and no such ModelConfig field)")
    return config, notes


def _accepts(callable_, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(callable_).parameters
    except (TypeError, ValueError):
        return False


def _make_dreamer(args: argparse.Namespace, config, device: str):
    from learner.dreamer import Dreamer

    kwargs = {"device": device}
    if args.discrete and _accepts(Dreamer, "discrete"):
        kwargs["discrete"] = True
    return Dreamer(_obs_spec(args), args.action, config, **kwargs)


def _param_counts(dreamer) -> tuple[int, dict | None]:
    total = sum(p.numel() for p in dreamer.parameters() if p.requires_grad)
    breakdown = None
    if callable(getattr(dreamer, "parameter_counts", None)):
        breakdown = {str(key): int(value) for key, value in dict(dreamer.parameter_counts()).items()}
    return int(total), breakdown


def _device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return _cpu_description()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit]


def _emit(payload: dict) -> None:
    sys.stdout.write(RESULT_MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _worker_info(args: argparse.Namespace) -> int:
    """Validate the sizes and settings, count parameters per size; one JSON line back."""
    try:
        import torch

        torch.set_num_threads(1)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available (torch {torch.__version__})")
        if not (args.device == "cpu" or args.device.startswith("cuda")):
            raise ValueError(f"--device {args.device}: use cpu, cuda or cuda:N")
        configs = {}
        for size in args.size_list:  # validate every size and setting before building anything
            configs[size] = build_config(args, size)
        sizes = {}
        for size, (config, notes) in configs.items():
            try:
                dreamer = _make_dreamer(args, config, "cpu")
                params, breakdown = _param_counts(dreamer)
                del dreamer
                sizes[size] = {"params": params, "param_breakdown": breakdown, "notes": notes}
            except Exception as exc:  # noqa: BLE001 - its worker will fail too and say so in the table
                sizes[size] = {"params": None, "param_breakdown": None, "notes": notes, "error": _one_line(exc)}
        _emit({"torch": torch.__version__, "device": _device_description(args.device), "sizes": sizes})
        return 0
    except ValueError as exc:  # a bad size, setting or override: the message says which
        _emit({"error": " ".join(str(exc).split())})
        return 1
    except Exception as exc:  # noqa: BLE001 - reported in one line by the parent
        _emit({"error": _one_line(exc, limit=1000)})
        return 1


def _resolved_dtype(dreamer, configured: str) -> str:
    """The compute dtype the agent settled on ("auto" resolved), where it says so."""
    if hasattr(dreamer, "autocast_dtype"):
        dtype = dreamer.autocast_dtype
        return "float32" if dtype is None else str(dtype).removeprefix("torch.")
    return configured


def _resolved_compile(dreamer, configured):
    """Whether the agent compiled anything ("auto" resolved), where it says so."""
    if hasattr(dreamer, "compiled"):
        return "on" if dreamer.compiled else "off"
    return configured


def make_batch(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random sequences in the layout of ``Dreamer.train_step``."""
    b, t = args.batch, args.length
    batch: dict[str, np.ndarray] = {}
    if args.image:
        batch["image"] = rng.integers(0, 256, (b, t, args.image, args.image, 3), dtype=np.uint8)
    if args.vector:
        batch["vector"] = rng.standard_normal((b, t, args.vector), dtype=np.float32)
    if args.discrete:
        batch["action"] = np.eye(args.action, dtype=np.float32)[rng.integers(0, args.action, (b, t))]
    else:
        batch["action"] = rng.uniform(-1.0, 1.0, (b, t, args.action)).astype(np.float32)
    is_first = rng.random((b, t)) < 0.02
    is_first[:, 0] = True
    # An episode ends on the step before the next one starts; some of those ends are terminal.
    is_last = np.zeros((b, t), bool)
    is_last[:, :-1] = is_first[:, 1:]
    is_terminal = is_last & (rng.random((b, t)) < 0.5)
    reward = rng.standard_normal((b, t), dtype=np.float32)
    reward[is_first] = 0.0
    batch.update(reward=reward, is_first=is_first, is_last=is_last, is_terminal=is_terminal)
    return batch


def _make_observation(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, np.ndarray]:
    obs = {}
    if args.image:
        obs["image"] = rng.integers(0, 256, (args.image, args.image, 3), dtype=np.uint8)
    if args.vector:
        obs["vector"] = rng.standard_normal(args.vector, dtype=np.float32)
    return obs


def _worker(args: argparse.Namespace, size: str) -> int:
    """Train and act with one size; print one JSON line with the figures."""
    try:
        import torch
        from learner.dreamer import Policy

        threads = args.threads or _cores()
        torch.set_num_threads(threads)
        torch.manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        cuda = args.device.startswith("cuda")

        config, notes = build_config(args, size)
        dreamer = _make_dreamer(args, config, args.device)
        params, breakdown = _param_counts(dreamer)
        batch = make_batch(args, rng)

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        for _ in range(args.warmup_updates):
            dreamer.train_step(batch)
        sync()
        times = []
        metrics: dict = {}
        for _ in range(args.updates):
            sync()
            start = time.perf_counter()
            metrics = dreamer.train_step(batch)
            sync()
            times.append(time.perf_counter() - start)
        update_s = statistics.median(times)
        non_finite = sorted(key for key, value in metrics.items()
                            if isinstance(value, float) and not math.isfinite(value))
        cuda_peak_mb = torch.cuda.max_memory_allocated(torch.device(args.device)) / 2**20 if cuda else None

        # The actor's side: batch 1, one thread, CPU, as the acting process runs it.
        torch.set_num_threads(1)
        policy_kwargs = {"discrete": True} if args.discrete and _accepts(Policy, "discrete") else {}
        policy = Policy(_obs_spec(args), args.action, config, **policy_kwargs)
        policy.load(dreamer.policy_state_dict())
        observations = [_make_observation(args, rng) for _ in range(16)]
        latencies = []
        for i in range(ACTOR_WARMUP_STEPS + args.actor_steps):
            obs = observations[i % len(observations)]
            start = time.perf_counter()
            action = policy.act(obs, is_first=(i % 100 == 0))
            elapsed = time.perf_counter() - start
            if i >= ACTOR_WARMUP_STEPS:
                latencies.append(elapsed * 1e3)
        action = np.asarray(action)
        host_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

        result = {
            "size": size,
            "params": params,
            "update_s": update_s,
            "replayed_steps_per_s": args.batch * args.length / update_s,
            "actor_step_ms_p50": float(np.percentile(latencies, 50)),
            "actor_step_ms_p99": float(np.percentile(latencies, 99)),
            "peak_mem_mb": cuda_peak_mb if cuda else host_peak_mb,
            "host_peak_mb": host_peak_mb,
            "update_times_s": times,
            "training_threads": threads,
            "dtype": _resolved_dtype(dreamer, notes["dtype"]),
            "compile": _resolved_compile(dreamer, notes["compile"]),
            "action_shape": list(action.shape),
        }
        if breakdown is not None:
            result["param_breakdown"] = breakdown
        if non_finite:
            result["warning"] = f"non-finite metrics after the timed updates: {', '.join(non_finite)}"
        _emit(result)
        return 0
    except Exception as exc:  # noqa: BLE001 - reported as this size's failure
        _emit({"size": size, "error": _one_line(exc)})
        return 1


# --------------------------------------------------------------------------------------------
# Parent: no torch here, so each worker's peak memory is its own.


def _run_child(args: argparse.Namespace, extra: list[str]) -> tuple[dict | None, str]:
    """Run this script with ``extra`` flags; returns (its JSON line or None, a one-line failure reason)."""
    command = [sys.executable, str(Path(__file__).resolve()), *args.argv, *extra]
    timeout = args.timeout
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    payload = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            try:
                payload = json.loads(line[len(RESULT_MARKER):])
            except json.JSONDecodeError:
                pass
    if payload is not None:
        return payload, payload.get("error", "")
    if proc.returncode < 0:
        signal_number = -proc.returncode
        hint = " (likely out of memory)" if signal_number == 9 else ""
        return None, f"killed by signal {signal_number}{hint}"
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit status {proc.returncode}, no result"
    return None, reason[:300]


def _format_count(count: int) -> str:
    if count >= 1e6:
        return f"{count / 1e6:.2f}M"
    if count >= 1e3:
        return f"{count / 1e3:.1f}k"
    return str(count)


COLUMNS = ("size", "params", "update s", "replayed steps/s", "actor p50 ms", "actor p99 ms", "peak MB")
WIDTHS = (8, 8, 9, 16, 12, 12, 9)


def _row(cells) -> str:
    return " | ".join(f"{str(cell):>{width}}" for cell, width in zip(cells, WIDTHS))


def _table_row(result: dict) -> str:
    if "error" in result:
        params = _format_count(result["params"]) if result.get("params") else "-"
        return f"{result['size']:>{WIDTHS[0]}} | {params:>{WIDTHS[1]}} | failed: {result['error']}"
    return _row((
        result["size"],
        _format_count(result["params"]),
        f"{result['update_s']:.3f}",
        f"{result['replayed_steps_per_s']:.0f}",
        f"{result['actor_step_ms_p50']:.2f}",
        f"{result['actor_step_ms_p99']:.2f}",
        f"{result['peak_mem_mb']:.0f}",
    ))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker_info:
        return _worker_info(args)
    if args.worker is not None:
        return _worker(args, args.worker)

    info, reason = _run_child(args, ["--worker-info"])
    if info is None or "error" in info:
        print(f"bench_learner: {reason}", file=sys.stderr)
        return 2
    device = info["device"]
    first_notes = info["sizes"][args.size_list[0]]["notes"]
    settings = {
        "batch": args.batch, "length": args.length,
        "obs": {key: {"shape": list(shape), "dtype": dtype} for key, (shape, dtype) in _obs_spec(args).items()},
        "action": args.action, "discrete": args.discrete,
        "dtype": first_notes["dtype"], "dtype_requested": args.dtype, "dtype_field": first_notes["dtype_field"],
        "compile": first_notes["compile"], "compile_requested": args.compile,
        "compile_field": first_notes["compile_field"],
        "updates": args.updates, "warmup_updates": args.warmup_updates,
        "actor_steps": args.actor_steps, "actor_warmup_steps": ACTOR_WARMUP_STEPS,
        "threads": args.threads or _cores(), "actor_threads": 1, "overrides": list(args.set),
        "device_requested": args.device, "seed": args.seed,
    }
    print(f"device: {device}; torch {info['torch']}")
    print(f"batch {args.batch} x {args.length}, obs {json.dumps(settings['obs'])}, "
          f"action {args.action}{' discrete' if args.discrete else ''}, dtype {settings['dtype']}, "
          f"compile {settings['compile']}, {settings['threads']} training threads, "
          f"{args.warmup_updates} warm-up + {args.updates} timed updates")
    for size in args.size_list:
        entry = info["sizes"][size]
        breakdown = entry["param_breakdown"]
        parts = f"  ({', '.join(f'{k} {_format_count(v)}' for k, v in breakdown.items())})" if breakdown else ""
        if entry["params"] is None:
            print(f"params {size}: failed: {entry['error']}")
        else:
            print(f"params {size}: {entry['params']:,}{parts}")
    print()
    print(_row(COLUMNS))
    print("-+-".join("-" * width for width in WIDTHS), flush=True)

    results = []
    for size in args.size_list:
        payload, reason = _run_child(args, ["--worker", size])
        if payload is None or "error" in payload:
            entry = info["sizes"][size]
            result = {"size": size, "params": entry["params"], "error": reason or "unknown failure"}
            if entry["param_breakdown"] is not None:
                result["param_breakdown"] = entry["param_breakdown"]
        else:
            result = payload
        results.append(result)
        print(_table_row(result), flush=True)
        if "warning" in result:
            print(f"  warning ({size}): {result['warning']}", flush=True)

    report = {"device": device, "torch": info["torch"], "settings": settings, "results": results}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 1 if all("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
