"""Config loading: typed, validated, overridable, with one-line errors naming key, value and fix."""
import textwrap
from pathlib import Path

import pytest

from robotd import config as cfg

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    config = cfg.load(CONFIGS / name)
    assert config.control.rate_hz > 0


def test_unknown_key_names_the_key_and_the_known_ones(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"unknown key 'control.rate'.*rate_hz"):
        cfg.load(write(tmp_path, "control: {rate: 10}\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"control.rate_hz = 'fast' is not a number"):
        cfg.load(write(tmp_path, "control: {rate_hz: fast}\n"))


def test_out_of_range_names_the_allowed_range(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"control.rate_hz = 5000.0 is out of range: allowed 1.0 to 1000.0"):
        cfg.load(write(tmp_path, "control: {rate_hz: 5000}\n"))


def test_bad_choice_lists_the_choices(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"control.fallback = 'drift' is not allowed: choose one of hold, stop"):
        cfg.load(write(tmp_path, "control: {fallback: drift}\n"))


def test_bool_is_not_accepted_as_an_integer(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"task.episode_steps = True is not an integer"):
        cfg.load(write(tmp_path, "task: {episode_steps: true}\n"))


def test_errors_are_one_line(tmp_path):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(write(tmp_path, "learner: {batch_size: -3}\n"))
    assert "\n" not in str(info.value)


def test_set_overrides_any_key_by_dotted_path(tmp_path):
    config = cfg.load(CONFIGS / "mock_arm.yaml", ["control.rate_hz=50", "control.action_deadline_ms=10",
                                                  "cameras.0.args.fps=15", "learner.model.overrides={deter: 32}"])
    assert config.control.rate_hz == 50.0
    assert config.cameras[0].args["fps"] == 15
    assert config.learner.model.overrides == {"deter": 32}


def test_set_is_validated_like_the_file():
    with pytest.raises(cfg.ConfigError, match=r"actor.chunk_steps = 0 is out of range"):
        cfg.load(CONFIGS / "mock_arm.yaml", ["actor.chunk_steps=0"])


def test_set_without_equals_says_how():
    with pytest.raises(cfg.ConfigError, match=r"write --set key.path=value"):
        cfg.load(None, ["control.rate_hz"])


def test_deadline_must_fit_in_the_period(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"action_deadline_ms = 80.0 is not below the control period 50 ms"):
        cfg.load(write(tmp_path, "control: {rate_hz: 20, action_deadline_ms: 80}\n"))


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"cannot be read.*check the path"):
        cfg.load(tmp_path / "nope.yaml")
    with pytest.raises(cfg.ConfigError, match=r"not valid YAML at line \d"):
        cfg.load(write(tmp_path, "a: 1\nb: [\n"))


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = cfg.load(CONFIGS / "mock_arm.yaml", ["seed=3"])
    cfg.save(config, tmp_path / "resolved.yaml")
    again = cfg.load(tmp_path / "resolved.yaml")
    assert again == config
    assert again.digest() == config.digest()


def test_digest_changes_with_what_processes_must_share():
    base = cfg.load(CONFIGS / "mock_arm.yaml")
    assert cfg.load(CONFIGS / "mock_arm.yaml", ["control.rate_hz=10"]).digest() == base.digest()
    assert cfg.load(CONFIGS / "mock_arm.yaml", ["task.episode_steps=50"]).digest() != base.digest()


def test_bare_on_and_off_in_yaml_mean_the_words(tmp_path):
    assert cfg.load(write(tmp_path, "control: {realtime: off}\n")).control.realtime == "off"
    assert cfg.load(write(tmp_path, "control: {realtime: on}\n")).control.realtime == "on"


def test_a_learner_profile_fills_the_keys_the_config_does_not_give(tmp_path):
    config = cfg.load(write(tmp_path, "learner: {profile: small_cpu}\n"))
    profile = cfg.LEARNER_PROFILES["small_cpu"]
    assert config.learner.model.preset == profile["model"]["preset"] == "small"
    assert (config.learner.batch_size, config.learner.train_ratio) == (profile["batch_size"], profile["train_ratio"])
    # The file's own keys win, and so do --set overrides (also one that names the profile itself).
    config = cfg.load(write(tmp_path, "learner: {profile: small_cpu, batch_size: 4, model: {overrides: {lr: 0.001}}}\n"),
                      ["learner.train_ratio=32"])
    assert config.learner.batch_size == 4 and config.learner.train_ratio == 32
    assert config.learner.model.preset == "small" and config.learner.model.overrides == {"lr": 0.001}
    assert cfg.load(write(tmp_path, "learner: {batch_size: 4}\n"), ["learner.profile=small_cpu"]).learner.model.preset \
        == "small"
    # Without a profile, the plain defaults.
    assert cfg.load(write(tmp_path, "seed: 1\n")).learner.model.preset == "tiny"


def test_a_saved_config_with_a_profile_loads_back_the_same(tmp_path):
    config = cfg.load(write(tmp_path, "learner: {profile: small_cpu, batch_length: 16}\n"))
    cfg.save(config, tmp_path / "resolved.yaml")
    assert cfg.load(tmp_path / "resolved.yaml") == config


def test_an_unknown_profile_fails_in_one_line(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"learner.profile = 'fast' is not allowed: choose one of small_cpu"):
        cfg.load(write(tmp_path, "learner: {profile: fast}\n"))
    with pytest.raises(cfg.ConfigError, match=r"learner.profile = 'gpu'"):
        cfg.load(write(tmp_path, "seed: 1\n"), ["learner.profile=gpu"])


def test_learner_threads_auto_takes_every_core_only_when_the_simulation_waits_for_the_learner(tmp_path):
    import os
    cores = len(os.sched_getaffinity(0))
    lockstep = cfg.load(CONFIGS / "gym_pendulum.yaml", ["learner.threads=0", "learner.train_ratio=64"])
    assert lockstep.learner_threads() == cores
    assert cfg.load(CONFIGS / "gym_pendulum.yaml", ["learner.threads=0", "learner.train_ratio=0"]).learner_threads() == 1
    assert cfg.load(CONFIGS / "mock_arm.yaml", ["learner.threads=0"]).learner_threads() == 1      # real time
    assert cfg.load(CONFIGS / "gym_pendulum.yaml", ["learner.threads=3"]).learner_threads() == 3


# --- driver arguments: each driver's Args, checked at load ------------------------------------------------------
def test_a_drivers_unknown_argument_fails_at_load_naming_it_and_the_known_ones():
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(CONFIGS / "mock_arm.yaml", ["robot.args.latency_ms=1.0"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("config: unknown key 'robot.args.latency_ms': known keys here are ")
    assert "sensor_latency_s" in message and "home_q_rad" in message


def test_a_drivers_argument_out_of_range_or_of_the_wrong_type_fails_at_load():
    with pytest.raises(cfg.ConfigError, match=r"^config: robot.args.sensor_latency_s = -1.0 is out of range: "
                                              r"allowed 0.0 to 10.0$"):
        cfg.load(CONFIGS / "mock_arm.yaml", ["robot.args.sensor_latency_s=-1"])
    with pytest.raises(cfg.ConfigError, match=r"^config: cameras\[0\].args.fps = 'fast' is not a number"):
        cfg.load(CONFIGS / "mock_arm.yaml", ["cameras.0.args.fps=fast"])


def test_a_drivers_own_rules_across_its_arguments_fail_at_load_in_one_line():
    with pytest.raises(cfg.ConfigError, match=r"^config: robot.args: unknown fault key 'bogus_at_s'; allowed keys: "):
        cfg.load(CONFIGS / "mock_arm.yaml", ["robot.args.faults={bogus_at_s: 1}"])
    with pytest.raises(cfg.ConfigError, match=r"^config: robot.args: home_q_rad \[4.0, .*\] lies outside "
                                              r"joint_limits_rad"):
        cfg.load(CONFIGS / "mock_arm.yaml", ["robot.args.dof=2", "robot.args.home_q_rad=[4.0, 0.0]"])


def test_a_driver_built_directly_checks_its_arguments_the_same_way():
    from drivers.sim.mock import MockArm
    with pytest.raises(ValueError, match=r"^MockArm 'arm': tau_s = 0.0 is out of range: allowed 0.0001 to 100.0$"):
        MockArm(tau_s=0)
    with pytest.raises(ValueError, match=r"^MockArm 'arm': unknown key 'latency_ms': known keys here are "):
        MockArm(latency_ms=1.0)


def test_an_unknown_task_or_task_argument_fails_at_load_in_one_line():
    with pytest.raises(cfg.ConfigError, match=r"^config: task.name = 'fly' is not a known task: choose one of .*"
                                              r"mock_reach"):
        cfg.load(CONFIGS / "mock_arm.yaml", ["task.name=fly"])
    with pytest.raises(cfg.ConfigError, match=r"^config: unknown key 'task.args.radius': known keys here are "):
        cfg.load(CONFIGS / "mock_arm.yaml", ["task.args.radius=0.1"])
