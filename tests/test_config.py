import pytest

from tooltune.config import AgentConfig, ConfigError, TaskTier, load_config


def test_defaults_match_the_seed():
    c = AgentConfig()
    assert (c.max_trajectory_len, c.max_tools, c.max_tool_calls_per_turn) == (8192, 32, 5)
    assert (c.tool_call_timeout, c.learning_rate, c.batch_size) == (30.0, 1e-5, 16)
    assert (c.num_generations, c.beta, c.reward_baseline) == (8, 0.1, "mean")
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
        toml, overrides=["beta=0.05", "reward_baseline=min", "task_tier_weights.simple=3"]
    )
    assert c.max_turns == 4 and c.learning_rate == 3e-4 and c.beta == 0.05
    assert c.reward_baseline == "min"
    assert c.task_tier_weights == {TaskTier.SIMPLE: 0.75, TaskTier.COMPLEX: 0.25}
    yml = tmp_path / "c.yaml"
    yml.write_text("batch_size: 4\nscale_rewards: false\n")
    c = load_config(yml)
    assert c.batch_size == 4 and c.scale_rewards is False


def test_round_trip_through_dict():
    c = AgentConfig(max_turns=3, task_tier_weights={"simple": 2, "complex": 2})
    assert AgentConfig.from_dict(c.to_dict()) == c
    c = load_config(overrides=["data_seed=7"])
    assert c.data_seed == 7 and AgentConfig.from_dict(c.to_dict()).data_seed == 7


@pytest.mark.parametrize(
    "override, key",
    [
        ("learning_rate=-1", "learning_rate"),
        ("learning_rate='fast'", "learning_rate"),
        ("max_turns=0", "max_turns"),
        ("max_turns=2.5", "max_turns"),
        ("top_p=1.5", "top_p"),
        ("reward_baseline='median'", "reward_baseline"),
        ("loss_type='sum'", "loss_type"),
        ("loss_aggregation='sum'", "loss_type"),
        ("max_turn=3", "max_turn"),
        ("task_tier_weights.simple=-1", "task_tier_weights.simple"),
        ("task_tier_weights.hard=1", "task_tier_weights"),
        ("scale_rewards=3", "scale_rewards"),
        ("data_seed=1.5", "data_seed"),
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


FORMER = dict(
    num_samples=4, kl_coef=0.05, clip_eps=0.3, loss_aggregation="token_mean", ppo_epochs=2
)
CURRENT = dict(num_generations=4, beta=0.05, epsilon=0.3, loss_type="dapo", num_iterations=2)


def test_former_names_are_accepted_everywhere(tmp_path):
    """The seed's and tooltune's former names mean TRL's names: in a file, in --set, in Python."""

    def grpo_options(c: AgentConfig) -> dict:
        return {key: getattr(c, key) for key in CURRENT}

    p = tmp_path / "old.toml"
    p.write_text("".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in FORMER.items()))
    assert grpo_options(load_config(p)) == CURRENT
    assert grpo_options(load_config(overrides=[f"{k}={v!r}" for k, v in FORMER.items()])) == CURRENT
    assert grpo_options(AgentConfig(**FORMER)) == CURRENT
    assert grpo_options(AgentConfig().replace(**FORMER)) == CURRENT
    assert "num_samples" not in AgentConfig().to_dict()
    for old, new in {"seq_mean": "grpo", "token_mean": "dapo", "constant": "dr_grpo"}.items():
        assert AgentConfig(loss_type=old).loss_type == new


def test_a_later_layer_wins_under_either_name(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("kl_coef = 0.3\n")
    assert load_config(p, base={"beta": 0.2}).beta == 0.3  # the file over the preset
    assert load_config(p, overrides=["beta=0.4"]).beta == 0.4  # --set over the file
    assert load_config(overrides=["beta=0.4", "kl_coef=0.5"]).beta == 0.5  # the last --set


def test_one_setting_under_both_names_is_refused(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("beta = 0.1\nkl_coef = 0.2\n")
    with pytest.raises(ConfigError, match="'beta' is set twice"):
        load_config(p)
    with pytest.raises(ConfigError, match="'num_generations' is set twice"):
        AgentConfig.from_dict({"num_samples": 2, "num_generations": 4})


def test_retired_seed_keys_warn_and_are_dropped(tmp_path):
    p = tmp_path / "seed.toml"
    p.write_text("d_model = 4096\nnum_epochs = 3\nmax_turns = 4\n")
    with pytest.warns(UserWarning) as caught:
        c = load_config(p)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "'d_model' is ignored" in messages[0]
    assert "'num_epochs' is ignored" in messages[1]
    assert c.max_turns == 4 and "d_model" not in c.to_dict()


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
