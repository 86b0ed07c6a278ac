"""The command line explains itself: --version, a description and examples in every --help, defaults shown, and
one line for each mistake it can catch before a session starts (what is wrong, the value, how to fix it)."""
import argparse
import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from drivers import registry
from robotd import cli, orchestrator
from robotd import config as cfg

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "mock_arm.yaml")
NOT_TEXT = "give a YAML config (a text file such as configs/mock_arm.yaml)"


def robotd(*argv, timeout_s=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robotd", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT)


def one_error_line(result) -> str:
    """The single line a refused command prints (exit code 2, nothing else on stderr)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    return lines[0]


# --- --version -------------------------------------------------------------------------------------------
def test_version_prints_the_package_version():
    result = robotd("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"robotd {importlib.metadata.version('robotd')}\n"
    # the fallback for a checkout that is not installed reads the same figure from pyproject.toml
    assert cli._pyproject_version(cli.PYPROJECT) == importlib.metadata.version("robotd")


# --- --help ----------------------------------------------------------------------------------------------
def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand robotd lists, with the parser that reads its arguments (a program's own for those
    robotd hands over to, e.g. robotd actor -> python -m actor)."""
    top = cli.build_parser()
    (sub,) = [action for action in top._actions if isinstance(action, argparse._SubParsersAction)]
    parsers = {}
    for name, parser in sub.choices.items():
        if name in cli.PROGRAMS:
            module = importlib.import_module(cli.PROGRAMS[name])
            if hasattr(module, "__path__"):                  # a process: python -m PACKAGE runs PACKAGE/process.py
                module = importlib.import_module(f"{cli.PROGRAMS[name]}.process")
            parser = module.build_parser()
        parsers[name] = parser
    return parsers


def test_every_subcommand_has_a_description_examples_and_its_defaults_in_its_help():
    parsers = subcommand_parsers()
    assert set(parsers) >= {"train", "watch", "check", "daemon", "actor", "learner", "replay", "inspect", "eval",
                            "export", "keys"}
    for name, parser in parsers.items():
        text = parser.format_help()
        assert parser.prog == f"robotd {name}", name
        description = text.split("\n\n")[1]              # after the usage, before the arguments
        assert len(description) > 40 and not description.startswith(("positional", "options")), (name, text)
        assert "\nexamples:\n" in text, (name, text)
        example = text.split("\nexamples:\n")[1]
        assert f"  robotd {name} " in example, (name, example)
    # defaults are shown, where there is one to show
    helps = {name: parser.format_help() for name, parser in parsers.items()}
    assert "(default: 2.0)" in helps["check"] and "(default: 10)" in helps["eval"]
    assert "(default: 2)" in helps["inspect"] and "(default: measured)" in " ".join(helps["export"].split())
    assert "(default: None)" not in "".join(helps.values())


def test_a_handed_over_subcommand_shows_its_own_help():
    result = robotd("actor", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: robotd actor") and "\nexamples:\n  # " in result.stdout
    assert "robotd actor configs/" in result.stdout


# --- --steps ---------------------------------------------------------------------------------------------
def test_steps_below_what_the_learner_needs_fail_in_one_line_naming_the_fix(tmp_path):
    line = one_error_line(robotd("train", CONFIG, "--steps", "30", "--logdir", tmp_path / "x"))
    assert line == ("robotd train: error: --steps 30 is below the 200 steps this config needs before the learner's "
                    "first update (learner.min_replay_steps 200 in replay); give --steps 200 or more, or lower "
                    "learner.min_replay_steps")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_steps_that_are_not_positive_say_how_many_the_config_needs(tmp_path, steps):
    line = one_error_line(robotd("train", CONFIG, "--steps", steps, "--logdir", tmp_path / "x"))
    assert line == (f"robotd train: error: --steps {steps}: give a positive number of environment steps, at least "
                    f"the 200 this config needs before the learner's first update (learner.min_replay_steps 200 in "
                    f"replay), e.g. --steps 2500")
    assert not (tmp_path / "x").exists()


def test_the_steps_a_session_needs_follow_the_config():
    def needs(*overrides):
        return orchestrator.first_update_steps(cfg.load(CONFIG, list(overrides)))[0]
    assert needs() == 200                                                     # learner.min_replay_steps
    assert needs("learner.min_replay_steps=64", "actor.prefill_steps=1000") == 64   # the prefill is in replay too
    assert needs("learner.min_replay_steps=10", "learner.batch_length=48") == 48    # one whole training sequence
    config = cfg.load(CONFIG, ["learner.min_replay_steps=10"])
    cli.check_steps(32, config)                                               # exactly enough is enough
    with pytest.raises(ValueError, match=r"^--steps 31 is below the 32 steps .* lower learner.batch_length$"):
        cli.check_steps(31, config)


# --- config files ----------------------------------------------------------------------------------------
def test_a_binary_config_file_is_named_in_one_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    line = one_error_line(robotd("train", path, "--logdir", tmp_path / "s"))
    assert line == (f"robotd train: error: config file {str(path)!r} is not a text YAML file (byte 0x89 at offset 0 "
                    f"is not UTF-8): {NOT_TEXT}")
    assert not (tmp_path / "s").exists()


def test_control_characters_or_a_yaml_that_is_no_mapping_name_the_file(tmp_path):
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"seed: 1\nrobot: \x00\x01")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(nul)
    assert str(info.value) == (f"config file {str(nul)!r} is not a text YAML file (byte 0x00 at offset 15 is a "
                               f"control character): {NOT_TEXT}")
    listed = tmp_path / "list.yaml"
    listed.write_text("- robot\n- task\n")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(listed)
    assert str(info.value) == (f"config file {str(listed)!r} holds a YAML list, not a mapping of config sections: "
                               f"{NOT_TEXT}")
    with pytest.raises(cfg.ConfigError, match=r"^config file '.*' is a directory: give a YAML config file"):
        cfg.load(tmp_path)


# --- drivers ---------------------------------------------------------------------------------------------
def test_an_unknown_driver_is_named_with_the_known_ones_before_pacing_is_considered(tmp_path):
    line = one_error_line(robotd("train", CONFIG, "--set", "robot.driver=mock_arn", "--set", "control.pacing=lockstep",
                                 "--logdir", tmp_path / "x"))
    # the drivers the package registers (other tests register test_* drivers in this process, not in robotd's)
    known = [name for name in registry.names() if not name.startswith("test_")]
    assert line == (f"robotd train: error: config: robot.driver = 'mock_arn' is not a known driver: choose one of "
                    f"{', '.join(known)}")
    assert "mock_arm, mock_camera" in line and "pacing" not in line
    # a camera's, with realtime pacing, and the registry's own refusal say the same
    with pytest.raises(cfg.ConfigError, match=r"^config: cameras\[0\].driver = 'webcam' is not a known driver: "
                                              r"choose one of a1, "):
        cfg.load(CONFIG, ["cameras.0.driver=webcam"])
    with pytest.raises(ValueError, match=r"^driver 'webcam' is not a known driver: choose one of a1, "):
        registry.make("webcam")


# --- log directory ---------------------------------------------------------------------------------------
def test_a_refused_log_directory_says_how_to_continue_from_its_checkpoint(tmp_path):
    old = tmp_path / "old"
    (old / "episodes").mkdir(parents=True)
    (old / "episodes" / "actor0-000000.h5").write_bytes(b"recorded")
    (old / "checkpoints").mkdir()
    (old / "checkpoints" / "latest.pt").write_bytes(b"weights")
    line = one_error_line(robotd("train", CONFIG, "--logdir", old))
    checkpoint = old / "checkpoints" / "latest.pt"
    assert line == (f"robotd train: error: log directory {str(old)!r} already holds a session: to continue from it, "
                    f"give a new --logdir and --init {checkpoint} (its newest checkpoint); to start afresh, just a "
                    f"new --logdir (its episodes and checkpoints are kept as they are)")
    assert (old / "episodes" / "actor0-000000.h5").read_bytes() == b"recorded"


# --- a session that ends before the learner's first update -----------------------------------------------
class _Ended:
    """A process of a session that has ended, as ending_report sees it."""

    def __init__(self, name: str):
        self.name = name

    def exit_message(self, code, *, how=None):
        return f"{self.name} {how or f'exited with code {code}'}"


def _report(tmp_path, codes, *, learner_stopped=True, summary=None, status=None, reason="steps done"):
    children = {name: _Ended(name) for name in ("daemon", "actor", "learner")}
    summary = {"env_steps": 260, "learner_updates": None, "ingested_steps": None, **(summary or {})}
    return orchestrator.ending_report(children, codes, reason, learner_stopped=learner_stopped, root=tmp_path,
                                      summary=summary, status=status or {}, config=cfg.load(CONFIG))


def test_a_learner_stopped_before_its_first_update_is_a_plain_sentence_not_a_failure(tmp_path):
    # Ray's start cut short by the stop: the learner exits with code 15 and wrote no stats
    lines, failed = _report(tmp_path, {"daemon": 0, "actor": 0, "learner": 15})
    assert lines == ["robotd train: the session ended after 260 steps, before the learner's first update (it needs "
                     "200 steps in replay; it was still starting up), so no checkpoint was written: run longer with "
                     "--steps or --minutes"]
    assert not failed
    # up, but not trained yet: its stats say how far it got
    lines, failed = _report(tmp_path, {"daemon": 0, "actor": 0, "learner": 0},
                            summary={"learner_updates": 0, "ingested_steps": 150})
    assert lines == ["robotd train: the session ended after 260 steps, before the learner's first update (it needs "
                     "200 steps in replay; it had 150), so no checkpoint was written: run longer with --steps or "
                     "--minutes"]
    assert not failed
    # from its last status message when it wrote no stats; the actor's own failure is still one
    lines, failed = _report(tmp_path, {"daemon": 0, "actor": 3, "learner": None},
                            status={"learner": {"replay_steps": 230, "updates": 0}})
    assert lines == ["robotd train: actor exited with code 3",
                     "robotd train: the session ended after 260 steps, before the learner's first update (it needs "
                     "200 steps in replay; it had 230 but had not made an update yet), so no checkpoint was written: "
                     "run longer with --steps or --minutes"]
    assert failed


def test_a_learner_that_trained_or_failed_by_itself_is_reported_as_before(tmp_path):
    lines, failed = _report(tmp_path, {"daemon": 0, "actor": 0, "learner": 0}, summary={"learner_updates": 12})
    assert lines == [] and not failed
    lines, failed = _report(tmp_path, {"daemon": 0, "actor": 0, "learner": 1}, summary={"learner_updates": 12})
    assert lines == ["robotd train: learner exited with code 1"] and failed
    lines, failed = _report(tmp_path, {"daemon": 0, "actor": -15, "learner": 2}, learner_stopped=False,
                            reason="learner exited with code 2")
    assert lines == ["robotd train: learner exited with code 2"] and failed


def test_a_process_ended_by_robotd_trains_sigterm_is_not_a_failure(tmp_path):
    # A daemon that dies of the SIGTERM robotd train sent it (it came before its handler was set, or while it was
    # already exiting) stopped as asked; one killed otherwise did not.
    lines, failed = _report(tmp_path, {"daemon": -15, "actor": 0, "learner": 0}, summary={"learner_updates": 12})
    assert lines == [] and not failed
    lines, failed = _report(tmp_path, {"daemon": -9, "actor": 0, "learner": 0}, summary={"learner_updates": 12})
    assert lines == ["robotd train: daemon exited with code -9"] and failed


@pytest.mark.slow
def test_a_session_too_short_for_the_learner_to_start_ends_with_a_plain_sentence(tmp_path):
    """Whole processes: 64 steps in lockstep end long before the learner is up."""
    logdir = tmp_path / "short"
    result = robotd("train", CONFIG, "--steps", "64", "--logdir", logdir, "--set", "control.pacing=lockstep",
                    "--set", "learner.min_replay_steps=64", "--set", "learner.batch_length=16",
                    "--set", "actor.drain_timeout_s=0", "--set", "control.realtime=off", timeout_s=180)
    assert ("robotd train: the session ended after 64 steps, before the learner's first update (it needs 64 steps "
            "in replay; ") in result.stderr, result.stderr[-3000:]
    assert "learner exited" not in result.stderr and "learner failed" not in result.stderr
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["env_steps"] == summary["logged_steps"] == 64
