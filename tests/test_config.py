import pytest

from tooltune.config import AgentConfig, ConfigError, TaskTier, load_config


def test_defaults_match_the_seed():
    c = AgentConfig()
    assert (c.d_model, c.max_trajectory_len, c.max_tools, c.max_tool_calls_per_turn) == (
        4096,
        8192,
        32,
        5,
    )
    assert (c.tool_call_timeout, c.learning_rate, c.batch_size, c.num_epochs) == (30.0, 1e-5, 16, 3)
    assert (c.num_samples, c.kl_coef, c.reward_baseline) == (8, 0.1, "mean")
    assert (c.max_turns, c.temperature, c.top_p) == (10, 0.7, 0.9)
    # the seed's 30/30/20/20 over the tool tiers, scaled to leave a tenth for the no-tool tier
    assert c.task_tier_weights == pytest.approx({
        TaskTier.SIMPLE: 0.27,
        TaskTier.MULTI_TOOL_SEQ: 0.27,
        TaskTier.MULTI_TOOL_PAR: 0.18,
        TaskTier.COMPLEX: 0.18,
        TaskTier.NO_TOOL: 0.1,
    })  # fmt: skip


def test_toml_yaml_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        "max_turns = 4\nlearning_rate = 3e-4\n[task_tier_weights]\nsimple = 1\ncomplex = 1\n"
    )
    c = load_config(
        toml, overrides=["kl_coef=0.05", "reward_baseline=min", "task_tier_weights.simple=3"]
    )
    assert c.max_turns == 4 and c.learning_rate == 3e-4 and c.kl_coef == 0.05
    assert c.reward_baseline == "min"
    assert c.task_tier_weights == {TaskTier.SIMPLE: 0.75, TaskTier.COMPLEX: 0.25}
    yml = tmp_path / "c.yaml"
    yml.write_text("batch_size: 4\nscale_rewards: false\n")
    c = load_config(yml)
    assert c.batch_size == 4 and c.scale_rewards is False


def test_round_trip_through_dict():
    c = AgentConfig(max_turns=3, task_tier_weights={"simple": 2, "complex": 2})
    assert AgentConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "override, key",
    [
        ("learning_rate=-1", "learning_rate"),
        ("learning_rate='fast'", "learning_rate"),
        ("max_turns=0", "max_turns"),
        ("max_turns=2.5", "max_turns"),
        ("top_p=1.5", "top_p"),
        ("reward_baseline='median'", "reward_baseline"),
        ("loss_aggregation='sum'", "loss_aggregation"),
        ("max_turn=3", "max_turn"),
        ("task_tier_weights.simple=-1", "task_tier_weights.simple"),
        ("task_tier_weights.hard=1", "task_tier_weights"),
        ("scale_rewards=3", "scale_rewards"),
        ("reward_weights.outcome=-2", "reward_weights.outcome"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_weights_that_cannot_be_normalised():
    with pytest.raises(ConfigError, match="task_tier_weights"):
        AgentConfig(task_tier_weights={"simple": 0, "complex": 0})


def test_unknown_key_suggests(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("kl_coeff = 0.1\n")
    with pytest.raises(ConfigError, match="did you mean 'kl_coef'"):
        load_config(p)


@pytest.mark.parametrize(
    "name, text",
    [
        ("broken.toml", "max_turns = = 3"),
        ("broken.yaml", "a: [1,"),
        ("list.yaml", "- 1\n- 2\n"),
        ("x.ini", "a=1"),
    ],
)
def test_broken_files_are_clear_errors(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=str(p.name)):
        load_config(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/config.toml")


def test_direct_construction_is_checked():
    with pytest.raises(ConfigError, match="batch_size"):
        AgentConfig(batch_size="16")
