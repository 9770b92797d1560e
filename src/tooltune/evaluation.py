"""Evaluation: roll a policy out on tasks and compute the seed's tables.

Accuracy per tier comes from `tooltune.tasks.verify` (the answer or the world state, never a
reward). The efficiency table is computed from the trajectories:

    avg_steps               assistant turns per episode
    tool_call_failure_rate  failed tool calls / tool calls
    unplanned_failure_rate  failed calls that are not their task's planted failure / tool calls
    unnecessary_call_rate   calls beyond each task's minimal solution / tool calls (of tasks
                            whose minimal solution is known; None when no task's is; a no-tool
                            task's minimal solution is empty: every call made on one counts)
    parallel_call_rate      MULTI_TOOL_PAR tasks whose independent calls came in one turn
    by_template             tasks solved per template (`metadata["template"]`), with its tier
                            and, where known, whether it is new
    by_shape                accuracy on tasks of templates training also draws from ("seen")
                            and of templates only the test split has ("new"), when the tasks
                            say which (`metadata["new_shape"]`, the built-in world's do)
    failures                failed tasks counted by why they failed (`FAILURES`, `why_failed`)

The complex tier plants failures on purpose (a sold-out flight, a moved file, a query for an
old schema): the task's `metadata["planted_failures"]` lists those calls, and a failed call that
matches one of them (each at most once per episode) is a planted failure, not a mistake.

Episodes run in batches through `TrajectoryCollector`, which generates for the whole batch at
once and runs the batch's tool calls concurrently.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tooltune.config import TIER_LABELS, AgentConfig, TaskTier
from tooltune.prompt_format import tool_style_of
from tooltune.rollout import SamplingParams, TrajectoryCollector
from tooltune.tasks.checkers import verify
from tooltune.types import AgentTrajectory

TIERS = [t.value for t in TaskTier]


def _parallel_done(task: Any, trajectory: AgentTrajectory) -> bool:
    needed = max(2, int(task.metadata.get("parallel") or 2))
    return any(len(step.action.tool_calls) >= needed for step in trajectory.steps)


def _same_argument(got: Any, planted: Any) -> bool:
    if isinstance(got, str) and isinstance(planted, str):
        return " ".join(got.split()) == " ".join(planted.split())
    return got == planted


def _call_pairs(trajectory: AgentTrajectory) -> list[tuple[Any, Any]]:
    """(call, response) of every executed call, paired within each step by call id (by
    position when the ids do not tell)."""
    pairs = []
    for step in trajectory.steps:
        calls, responses = step.action.tool_calls, step.tool_responses
        by_id = {c.id: c for c in calls}
        if len(by_id) == len(calls) and all(r.call_id in by_id for r in responses):
            pairs += [(by_id[r.call_id], r) for r in responses]
        else:
            pairs += list(zip(calls, responses, strict=False))
    return pairs


def planted_failures(task: Any, trajectory: AgentTrajectory) -> int:
    """Failed calls of the episode that are its task's planted failures: same tool and the
    same identifying arguments as a call in `metadata["planted_failures"]`, each matched once."""
    left = list((getattr(task, "metadata", None) or {}).get("planted_failures") or [])
    count = 0
    for call, response in _call_pairs(trajectory):
        if response.success or not left:
            continue
        arguments = call.arguments if isinstance(call.arguments, dict) else {}
        for i, spec in enumerate(left):
            if spec.get("name") == call.name and all(
                _same_argument(arguments.get(k), v) for k, v in spec.get("arguments", {}).items()
            ):
                count += 1
                del left[i]
                break
    return count


FAILURES = {
    "no_answer": "Stopped without an answer (turn or length limit)",
    "no_call": "No call, where the task needs one",
    "needless_call": "Calls, where the task needs none",
    "too_few_calls": "Fewer successful calls than the task needs",
    "wrong_answer": "The calls the task needs ran; wrong answer",
    "unknown": "Failed (the task's minimal solution is unknown)",
}


SHORT_FAILURES = {"no_answer": "no answer", "no_call": "no call", "needless_call": "needless calls",
                  "too_few_calls": "too few calls", "wrong_answer": "wrong answer",
                  "unknown": "unknown"}  # fmt: skip


def why_failed(task: Any, trajectory: AgentTrajectory) -> str | None:
    """Why an episode failed, as a key of `FAILURES` (None: it succeeded). Judged against the
    task's minimal solution: a model that never calls, stops early, or misreads what its calls
    returned needs different data, and the accuracy alone does not say which."""
    if trajectory.success:
        return None
    if trajectory.metadata.get("stop_reason", "answer") != "answer":
        return "no_answer"
    minimal = task.minimal_calls
    if minimal is None:
        return "unknown"
    if not minimal:
        return "needless_call" if trajectory.tool_calls else "wrong_answer"
    if not trajectory.tool_calls:
        return "no_call"
    succeeded = sum(r.success for r in trajectory.tool_responses)
    return "too_few_calls" if succeeded < len(minimal) else "wrong_answer"


def task_groups(tasks: list) -> list[str]:
    """The groups to report: the built-in world's four tiers when every task has one (so its
    tables keep all four rows), else each group the tasks carry, in order of appearance."""
    names = list(dict.fromkeys(str(t.tier) for t in tasks))
    return list(TIERS) if set(names) <= set(TIERS) else names


def compute_metrics(
    tasks: list, trajectories: list[AgentTrajectory], groups: list[str] | None = None
) -> dict[str, Any]:
    """The seed's tables from finished trajectories (one per task, in order); accuracy and
    counts per group (`task_groups` by default)."""
    if len(tasks) != len(trajectories):
        raise ValueError("one trajectory per task is needed")
    groups = list(groups) if groups is not None else task_groups(tasks)
    correct: Counter = Counter()
    counts: Counter = Counter()
    by_template: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    template_facts: dict[str, dict[str, Any]] = {}  # each template's tier, and whether it is new
    by_shape: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    steps = calls = failed = planted = extra = judged = (
        0  # judged: calls of tasks with a known minimum
    )
    par_total = par_done = 0
    failures: Counter = Counter()
    for task, traj in zip(tasks, trajectories, strict=True):
        failures[why_failed(task, traj)] += 1
        tier = str(task.tier)
        counts[tier] += 1
        correct[tier] += bool(traj.success)
        template = task.metadata.get("template", "")
        by_template[template][0] += bool(traj.success)
        by_template[template][1] += 1
        template_facts.setdefault(template, {"tier": tier})
        if "new_shape" in task.metadata:
            template_facts[template]["new_shape"] = bool(task.metadata["new_shape"])
            shape = "new" if task.metadata["new_shape"] else "seen"
            by_shape[shape][0] += bool(traj.success)
            by_shape[shape][1] += 1
        n_calls = len(traj.tool_calls)
        steps += len(traj.steps)
        calls += n_calls
        failed += sum(not r.success for r in traj.tool_responses)
        planted += planted_failures(task, traj)
        if task.minimal_calls is not None:
            extra += max(0, n_calls - len(task.minimal_calls))
            judged += n_calls
        if tier == TaskTier.MULTI_TOOL_PAR.value and task.metadata.get("parallel", 0) >= 2:
            par_total += 1
            par_done += _parallel_done(task, traj)
    n = len(tasks)
    groups += [g for g in counts if g not in groups]
    accuracy = {g: (correct[g] / counts[g] if counts[g] else None) for g in groups}
    accuracy["overall"] = sum(correct.values()) / n if n else None
    return {
        "n_tasks": n,
        "counts": {g: counts[g] for g in groups},
        "correct": {g: correct[g] for g in groups},
        "accuracy": accuracy,
        "avg_steps": steps / n if n else None,
        "avg_tool_calls": calls / n if n else None,
        "tool_calls": calls,
        "failed_tool_calls": failed,
        "planted_failures": planted,
        "tool_call_failure_rate": failed / calls if calls else 0.0,
        "unplanned_failure_rate": (failed - planted) / calls if calls else 0.0,
        "unnecessary_call_rate": extra / judged if judged else (0.0 if calls == judged else None),
        "parallel_call_rate": par_done / par_total if par_total else None,
        "by_template": {
            k: {"correct": v[0], "n": v[1], **template_facts[k]}
            for k, v in sorted(by_template.items())
        },
        **({"by_shape": _rates(by_shape, ("seen", "new"))} if by_shape else {}),
        "failures": {k: failures[k] for k in FAILURES if failures[k]},
    }


def _rates(counts: dict[str, list[int]], order: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {
        k: {"correct": counts[k][0], "n": counts[k][1], "accuracy": counts[k][0] / counts[k][1]}
        for k in order
        if counts[k][1]
    }


def default_batch_size(policy: Any) -> int:
    """Episodes an evaluation runs at once: 32 on a CPU, where a decoding step's time grows with
    its rows; 128 on a GPU, where a step of a small model costs about the same for 32 rows as
    for 128 (its kernels' launches, not their arithmetic, set the time)."""
    device = getattr(policy, "device", None)
    return 128 if getattr(device, "type", None) == "cuda" else 32


def run_evaluation(
    policy: Any,
    tasks: list,
    env: Any,
    config: AgentConfig | None = None,
    *,
    groups: list[str] | None = None,
    batch_size: int | None = None,  # None: `default_batch_size(policy)`
    sampling: SamplingParams | None = None,
    tool_style: str | None = None,  # None: the style the policy was trained with
    progress: Any = None,  # True for a progress bar, or a callable(done, total)
    **collector_kwargs: Any,
) -> tuple[dict[str, Any], list[AgentTrajectory]]:
    """Roll out `policy` once per task in `env`; (metrics, trajectories in task order).

    `env` is any environment (`tooltune.ToolEnv`, the built-in world): a tool source whose
    `verify(task, trajectory)` decides success (a bare tool source falls back to the task's
    checker spec). Accuracy is reported per `groups` (default: `task_groups(tasks)`).
    A policy with a `prepare(tasks)` method (the scripted expert) is told the tasks first.
    Without `tool_style`, a model is prompted as it was trained (its `prompt_format`).
    At most `batch_size` episodes run at once, and each finished one hands its place to the
    next task (`TrajectoryCollector.collect(max_active=...)`)."""
    batch_size = default_batch_size(policy) if batch_size is None else batch_size
    prepare = getattr(policy, "prepare", None)
    if callable(prepare):
        prepare(tasks)
    config = config or getattr(env, "config", None) or AgentConfig()
    if sampling is None:
        sampling = SamplingParams(
            temperature=0.0, top_p=1.0, max_new_tokens=config.max_new_tokens, seed=config.seed
        )
    collector = TrajectoryCollector(
        policy,
        env,
        config,
        sampling=sampling,
        tool_style=tool_style or tool_style_of(policy),
        verifier=getattr(env, "verify", None) or (lambda task, t: verify(task, t, env)),
        **collector_kwargs,
    )
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="evaluation", unit="task", leave=False)
    done = 0

    def finished(_: AgentTrajectory) -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(done, len(tasks))

    try:
        trajectories = collector.collect(tasks, max_active=max(1, batch_size), on_finish=finished)
    finally:
        if bar is not None:
            bar.close()
    return compute_metrics(tasks, trajectories, groups), trajectories


def evaluate(
    policy: Any,
    tasks: list,
    env: Any,
    config: AgentConfig | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Metrics of `policy` on `tasks` (see the module docstring); the trajectories are under
    the key "trajectories" (drop it before writing the metrics as JSON)."""
    metrics, trajectories = run_evaluation(policy, tasks, env, config, **kwargs)
    return {**metrics, "trajectories": trajectories}


def summary_line(metrics: dict[str, Any]) -> str:
    """The metrics in one line for a run's log: accuracy per group, on held-out tools and per
    task shape where measured, the efficiency figures and why the failed tasks failed."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    acc = metrics["accuracy"]
    parts = [f"{g} {pct(acc[g])}" for g in metrics["counts"]]
    if "heldout_tools" in metrics:
        parts.append(f"held-out tools {pct(metrics['heldout_tools']['accuracy'])}")
    parts += [
        f"{k} task shapes {pct(v['accuracy'])}" for k, v in metrics.get("by_shape", {}).items()
    ]
    line = (f"accuracy {', '.join(parts)}; failures {pct(metrics['tool_call_failure_rate'])}, "
            f"unnecessary {pct(metrics['unnecessary_call_rate'])}, steps {metrics['avg_steps']:.2f}")  # fmt: skip
    if metrics.get("failures"):
        line += "; failed: " + ", ".join(
            f"{SHORT_FAILURES[k]} {n}" for k, n in metrics["failures"].items()
        )
    return line


def format_metrics(metrics: dict[str, Any]) -> str:
    """The seed's two tables as text."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    builtin = set(metrics["counts"]) <= set(TIERS)
    lines = [f"| {'Task Tier' if builtin else 'Group'} | Accuracy | n |", "|---|---|---|"]
    for group in metrics["counts"]:
        lines.append(f"| {TIER_LABELS.get(group, group)} | {pct(metrics['accuracy'][group])} | "
                     f"{metrics['counts'][group]} |")  # fmt: skip
    lines.append(f"| Overall | {pct(metrics['accuracy']['overall'])} | {metrics['n_tasks']} |")
    lines += ["", "| Metric | Value |", "|---|---|"]
    avg = metrics["avg_steps"]
    lines.append(f"| Avg. Steps per Task | {'-' if avg is None else f'{avg:.2f}'} |")
    lines.append(f"| Tool Call Failures | {pct(metrics['tool_call_failure_rate'])} |")
    if "unplanned_failure_rate" in metrics:
        lines.append(
            f"| Tool Call Failures (unplanned) | {pct(metrics['unplanned_failure_rate'])} |"
        )
    lines.append(f"| Unnecessary Tool Calls | {pct(metrics['unnecessary_call_rate'])} |")
    lines.append(f"| Parallel Calls (Multi-Tool Par) | {pct(metrics['parallel_call_rate'])} |")
    if metrics.get("failures"):
        lines += ["", "| Failed tasks | n |", "|---|---|"]
        lines += [f"| {FAILURES[k]} | {n} |" for k, n in metrics["failures"].items()]
    return "\n".join(lines)
