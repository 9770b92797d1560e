"""No retokenisation drift: a real token policy rolled out on world tasks through the real tools,
and every recorded episode checked against its re-rendering."""

import pytest
import torch

from tooltune import AgentConfig, SamplingParams, TrajectoryCollector
from tooltune.environment import Environment
from tooltune.policies import BuiltinPolicy
from tooltune.rollout import check_token_record, tokenize_trajectory
from tooltune.tasks import sample_tasks
from tooltune.tasks.expert import ExpertPolicy


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with Environment(
        world_dir=tmp_path_factory.mktemp("drift") / "world", seed=3, size="small"
    ) as env:
        yield env


def test_sampled_episodes_have_no_drift(env):
    config = AgentConfig(max_turns=3, max_new_tokens=40, max_trajectory_len=2048)
    tasks = sample_tasks("test", 6, seed=5, world=env)
    expert = ExpertPolicy(env)
    expert.prepare(tasks)
    demos = TrajectoryCollector(expert, env, config, tool_style="compact").collect(tasks)
    torch.manual_seed(0)
    policy = BuiltinPolicy.create([d.metadata["text"] for d in demos], size="tiny", vocab_size=512,
                                  max_seq_len=2048)  # fmt: skip
    # a random model writes arbitrary token soup, special tokens included: the hardest case
    # that soup holds a <tool_call> marker, which makes an episode go on, for 2-4 seeds in 10
    for seed in range(20):
        sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=40, seed=seed)
        collector = TrajectoryCollector(
            policy, env, config, sampling=sampling, tool_style="compact"
        )
        episodes = collector.collect(tasks, num_samples=2)
        if sum(len(e.steps) for e in episodes) > len(episodes):
            break  # several turns were recorded
    else:
        pytest.fail("no seed gave an episode of several turns")
    for episode in episodes:
        check_token_record(episode, policy, "compact")
        assert sum(episode.tokens.mask) > 0

    # the same check catches a record that drifted
    broken = episodes[0]
    first_prompt_token = broken.tokens.mask.index(0)
    broken.tokens.ids[first_prompt_token + 3] = policy.encode("zz")[0]
    with pytest.raises(ValueError):
        check_token_record(broken, policy, "compact")

    # demonstrations tokenised for SFT pass the same check
    for demo in demos:
        demo.tokens = tokenize_trajectory(demo, policy.encode, "compact")
        check_token_record(demo, policy, "compact")
