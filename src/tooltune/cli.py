"""The `tooltune` command: a thin layer over the library.

Bad command-line input exits with status 2 and one clear line on stderr; a tool call that runs
but fails prints its `ToolResponse` (with `"success": false`) and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from tooltune.bfcl_run import BATCH_SIZE as BFCL_BATCH_SIZE
from tooltune.chat_format import TOOL_STYLES
from tooltune.config import (
    AgentConfig,
    ConfigError,
    TaskTier,
    load_config,
    parse_override,
    read_config_file,
)


class UsageError(Exception):
    """Bad command-line input: printed on one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if argv is None and args.handler in (_demo, _train, _eval):  # the command, not a caller
        from tooltune.allocator import restart_with_jemalloc

        restart_with_jemalloc()  # training and rollouts: see tooltune.allocator
    try:
        return args.handler(args) or 0
    except (UsageError, ConfigError) as exc:
        print(f"tooltune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tooltune: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tooltune",
        description="Teach language models to use tools: rollouts, SFT, GRPO, verified evaluation.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML/YAML config file (AgentConfig fields)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set max_turns=5 (repeatable)")  # fmt: skip
    common.add_argument("--world", type=Path, help="world directory (default: a cache per seed)")
    common.add_argument("--seed", type=int, default=0, help="world and sampling seed (default 0)")

    run = argparse.ArgumentParser(add_help=False)  # what a training run takes (demo, train)
    run.add_argument("--model", help="smollm2-135m | builtin | a local HF model dir "
                     "(default: the preset's, smollm2-135m)")  # fmt: skip
    run.add_argument("--device", default="",
                     help="Hugging Face models: cpu | cuda | cuda:N (default: cuda where present)")  # fmt: skip
    run.add_argument("--out", type=Path, help="run directory (default: runs/<name>)")
    run.add_argument("--report-to", choices=["none", "tensorboard", "wandb"],
                     help="also send the metrics to TensorBoard (RUN_DIR/tensorboard) or W&B "
                          "(WANDB_MODE=offline works without network); default none")  # fmt: skip
    run.add_argument("--fresh", action="store_true",
                     help="discard an earlier run in the run directory (by default it is resumed)")  # fmt: skip

    demo = sub.add_parser("demo", parents=[common, run],
                          help="build the world, train, evaluate, report")  # fmt: skip
    demo.add_argument("--preset", help="default | builtin | smoke | a TOML file (default: default, "
                      "or builtin with --model builtin)")  # fmt: skip
    demo.add_argument("--name", help="run name (default: from preset and time)")
    demo.add_argument("--backend", choices=["local", "ray"], default="local",
                      help="where GRPO rollouts and tools run (default: local)")  # fmt: skip
    demo.add_argument(
        "--ray-address", default="", help="an existing Ray cluster (default: start one)"
    )
    demo.set_defaults(handler=_demo)

    train = sub.add_parser("train", parents=[common, run], help="train on your own environment "
                           "(tools, tasks, rewards): SFT, GRPO, evaluation, report")  # fmt: skip
    train.add_argument("--env", required=True, metavar="SPEC",
                       help="path/to/env.py or package.module, optionally :attr (a tooltune.ToolEnv "
                            "or a function returning one; default names: env, make_env)")  # fmt: skip
    train.add_argument("--preset", help="default | smoke | a TOML file (default: default, "
                       "or builtin with --model builtin)")  # fmt: skip
    train.add_argument("--name", help="run name (default: from environment, preset and model)")
    train.set_defaults(handler=_train)

    tools = sub.add_parser("tools", help="list or call the built-in tools")
    tools_sub = tools.add_subparsers(metavar="ACTION")
    listing = tools_sub.add_parser(
        "list", parents=[common], help="names, descriptions, JSON Schemas"
    )
    listing.add_argument(
        "--json", action="store_true", help="print the OpenAI-style tools JSON list"
    )
    listing.set_defaults(handler=_tools_list)
    call = tools_sub.add_parser(
        "call", parents=[common], help="call one tool, print its ToolResponse"
    )
    call.add_argument("name", help="tool name (see `tooltune tools list`)")
    call.add_argument("--args", default="{}", help="arguments as a JSON object")
    call.set_defaults(handler=_tools_call)
    tools.set_defaults(handler=lambda a: tools.print_help() or 2)

    evaluate = sub.add_parser("eval", parents=[common], help="evaluate a policy on held-out tasks")
    evaluate.add_argument("--policy", default="expert", help="expert | a saved model directory")
    evaluate.add_argument("--env", metavar="SPEC", help="a user environment (as for `tooltune "
                          "train`) instead of the built-in world; -n then counts per group")  # fmt: skip
    evaluate.add_argument(
        "--split", default="test", help="train | validation | test | heldout_tools"
    )
    evaluate.add_argument(
        "-n", type=int, default=200, help="number of tasks per tier (default 200)"
    )
    evaluate.add_argument("--tool-style", choices=TOOL_STYLES,
                          help="how the prompt lists the tools (default: as the model was "
                               "trained, from its prompt_format.json; json for the expert)")  # fmt: skip
    evaluate.add_argument("--constrained", action="store_true",
                          help="calls decoded under the tools' schemas: offered names, "
                               "declared arguments of their types, valid JSON")  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--trajectories", type=Path, help="also write the trajectories as JSONL")
    evaluate.set_defaults(handler=_eval)

    tasks = sub.add_parser("tasks", help="look at generated tasks")
    tasks_sub = tasks.add_subparsers(metavar="ACTION")
    sample = tasks_sub.add_parser("sample", parents=[common], help="print sampled tasks")
    sample.add_argument("--tier", choices=[t.value for t in TaskTier], help="only this tier")
    sample.add_argument("--split", default="train")
    sample.add_argument("-n", type=int, default=3)
    sample.add_argument("--json", action="store_true")
    sample.set_defaults(handler=_tasks_sample)
    tasks.set_defaults(handler=lambda a: tasks.print_help() or 2)

    export = sub.add_parser("export", help="write a trained model as a plain Hugging Face "
                            "directory (LoRA merged, chat template with tools)")  # fmt: skip
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a tooltune demo run directory or a saved policy directory")  # fmt: skip
    export.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new output directory")
    export.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="weights' dtype (default: the base model's, fp32 without one)")  # fmt: skip
    export.add_argument("--tool-style", choices=TOOL_STYLES,
                        help="only for a directory saved without prompt_format.json")  # fmt: skip
    export.set_defaults(handler=_export)

    bfcl = sub.add_parser("bfcl", help="Berkeley Function Calling Leaderboard files")
    bfcl_sub = bfcl.add_subparsers(metavar="ACTION")
    check = bfcl_sub.add_parser("check", help="score predictions with BFCL's AST rules")
    check.add_argument("--questions", type=Path, required=True)
    check.add_argument("--answers", type=Path, required=True)
    check.add_argument("--predictions", type=Path, required=True)
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=_bfcl_check)
    bfcl_run = bfcl_sub.add_parser("run", help="ask a model BFCL categories and score them")
    bfcl_run.add_argument("--model", default="builtin",
                          help="builtin | smollm2-135m | a saved model dir | a tooltune demo run dir")  # fmt: skip
    bfcl_run.add_argument(
        "--category",
        required=True,
        help="simple | multiple | parallel | parallel_multiple | irrelevance "
        "| live_*; several comma-separated (the model loaded once)",
    )
    bfcl_run.add_argument("--data", type=Path,
                          help="folder in BFCL's layout (default: the bfcl-eval package's data)")  # fmt: skip
    bfcl_run.add_argument("-n", type=int, help="only the first N entries")
    bfcl_run.add_argument("--out", type=Path, help="predictions file (default: runs/bfcl/...)")
    bfcl_run.add_argument("--tool-style", choices=TOOL_STYLES,
                          help="how the prompt lists the functions (default: as the model was "
                               "trained; compact for Hugging Face models, names for built-in)")  # fmt: skip
    bfcl_run.add_argument("--max-new-tokens", type=int, default=256)
    bfcl_run.add_argument("--batch-size", type=int, default=BFCL_BATCH_SIZE,
                          help="questions generated together (default %(default)s)")  # fmt: skip
    bfcl_run.add_argument("--device", default="", help="Hugging Face models: cpu | cuda | cuda:N")
    bfcl_run.add_argument("--constrained", action="store_true",
                          help="calls decoded under the functions' schemas: offered names, "
                               "declared arguments of their types, valid JSON")  # fmt: skip
    bfcl_run.add_argument("--json", action="store_true", help="print one JSON object")
    bfcl_run.set_defaults(handler=_bfcl_run)
    bfcl.set_defaults(handler=lambda a: bfcl.print_help() or 2)
    return parser


# ------------------------------------------------------------------------------------------------


def _config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> AgentConfig:
    return load_config(args.config, args.overrides, base=base)


def _environment(args: argparse.Namespace, config: AgentConfig):
    from tooltune.environment import Environment

    return Environment(world_dir=args.world, seed=args.seed, config=config)


def _eval_environment(args: argparse.Namespace, config: AgentConfig):
    if not args.env:
        return _environment(args, config)
    from tooltune.env import load_env

    try:
        env = load_env(args.env)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    env.config = config
    return env


def _tools_list(args: argparse.Namespace) -> int:
    config = _config(args)
    with _environment(args, config) as env, env.registry() as registry:
        if args.json:
            print(json.dumps(registry.openai_tools(), indent=2, ensure_ascii=False))
            return 0
        for definition in registry:
            print(definition.to_prompt_format())
            print(f"  schema: {json.dumps(definition.parameters, ensure_ascii=False)}\n")
    return 0


def _tools_call(args: argparse.Namespace) -> int:
    from tooltune.types import ToolCall

    try:
        arguments = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not valid JSON: {exc.msg} (at character {exc.pos})") from None
    if not isinstance(arguments, dict):
        raise UsageError('--args must be a JSON object, e.g. --args \'{"query": "x"}\'')
    config = _config(args)
    with _environment(args, config) as env, env.registry() as registry:
        if args.name not in registry:
            raise UsageError(f"unknown tool {args.name!r}; available: {', '.join(registry.names)}")
        response = registry.execute(ToolCall(id="cli", name=args.name, arguments=arguments))
    print(json.dumps(_response_dict(response), indent=2, ensure_ascii=False))
    return 0 if response.success else 1


def _response_dict(response) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(response)


def _eval(args: argparse.Namespace) -> int:
    from tooltune.evaluation import evaluate
    from tooltune.tasks import sample_tasks

    if args.n < 1:
        raise UsageError("-n must be at least 1")
    config, tool_style = _prompting(args, _config(args))
    with _eval_environment(args, config) as env:
        policy = _load_policy(args.policy, env, config)
        if args.env:
            tasks = env.sample_tasks(args.split, args.n, seed=args.seed, per_group=True)
            if not tasks:
                raise UsageError(f"the environment has no {args.split} tasks")
        else:
            tasks = []
            for tier in TaskTier:
                tasks += sample_tasks(args.split, args.n, seed=args.seed, tiers=[tier], world=env)
        try:
            result = evaluate(policy, tasks, env, config, tool_style=tool_style,
                              groups=list(env.groups), constrained_calls=args.constrained)  # fmt: skip
        except ValueError as exc:
            if not args.constrained:
                raise
            raise UsageError(str(exc)) from None
    metrics = result.get("metrics", result)
    if args.trajectories and "trajectories" in result:
        from tooltune.messages import write_trajectories

        write_trajectories(args.trajectories, result["trajectories"])
    metrics = {k: v for k, v in metrics.items() if k != "trajectories"}
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False))
    else:
        from tooltune.evaluation import format_metrics

        print(format_metrics(metrics))
    return 0


def _prompting(args: argparse.Namespace, config: AgentConfig) -> tuple[AgentConfig, str]:
    """(config, tool style) to evaluate with: a saved model's own prompt format (tool style and
    generation settings), except what the command line sets explicitly, which wins."""
    from tooltune.prompt_format import (
        FALLBACK_TOOL_STYLE,
        FILENAME,
        GENERATION_KEYS,
        PromptFormat,
        missing_message,
    )

    if args.policy == "expert":
        return config, args.tool_style or FALLBACK_TOOL_STYLE
    path = _policy_dir(args.policy)
    saved = PromptFormat.read(path)
    if saved is None:
        _say(f"warning: {missing_message(path)}")
        return config, args.tool_style or FALLBACK_TOOL_STYLE
    explicit = set(read_config_file(args.config)) if args.config else set()
    explicit |= {parse_override(text)[0][0] for text in args.overrides}
    used = saved.configure(config, keep=explicit)
    style = args.tool_style or saved.tool_style
    _say(f"prompting as saved in {path / FILENAME}: {saved.describe()}")
    if style != saved.tool_style:
        _say(f"note: --tool-style {style} overrides the saved tool style {saved.tool_style}")
    for key in GENERATION_KEYS:
        if getattr(used, key) != getattr(saved, key):
            _say(f"note: {key} {getattr(used, key)} from the command line overrides the saved "
                 f"{getattr(saved, key)}")  # fmt: skip
    return used, style


def _say(message: str) -> None:
    print(f"tooltune: {message}", file=sys.stderr)


def _policy_dir(name: str) -> Path:
    path = Path(name)
    if not path.exists():
        raise UsageError(
            f"--policy must be 'expert' or a saved model directory; {name!r} does not exist"
        )
    return path


def _load_policy(name: str, env, config: AgentConfig):
    if name == "expert":
        expert = env.expert()  # evaluate() hands it the tasks through prepare()
        if expert is None:
            raise UsageError("this environment has no expert; pass --policy DIR")
        return expert
    from tooltune.training.run_dir import load_policy

    return load_policy(_policy_dir(name))


def _tasks_sample(args: argparse.Namespace) -> int:
    from tooltune.tasks import format_task, sample_tasks

    if args.n < 1:
        raise UsageError("-n must be at least 1")
    tiers = [TaskTier(args.tier)] if args.tier else None
    config = _config(args)
    with _environment(args, config) as env:
        tasks = sample_tasks(args.split, args.n, seed=args.seed, tiers=tiers, world=env)
    if args.json:
        for task in tasks:
            print(json.dumps(task.to_dict(), ensure_ascii=False))
    else:
        print("\n\n".join(format_task(t) for t in tasks))
    return 0


def _bfcl_check(args: argparse.Namespace) -> int:
    from tooltune.tasks import bfcl

    for path in (args.questions, args.answers, args.predictions):
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
    try:
        report = bfcl.check_files(args.questions, args.answers, args.predictions)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(f"accuracy {report['accuracy']:.1%} on {report['n']} entries")
        for entry in report["entries"]:
            if not entry["valid"]:
                print(f"  {entry['id']}: {'; '.join(entry['reasons'])}")
    return 0


def _bfcl_run(args: argparse.Namespace) -> int:
    from tooltune import bfcl_run

    if args.n is not None and args.n < 1:
        raise UsageError("-n must be at least 1")
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UsageError("--max-new-tokens and --batch-size must be at least 1")
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"no such folder: {args.data}")
    label = re.sub(r"[^\w.-]+", "_", Path(args.model).name or args.model)
    categories = [c.strip() for c in args.category.split(",") if c.strip()]
    if len(categories) == 1:  # --out is the predictions file
        outs = {categories[0]: args.out or Path("runs") / "bfcl" / f"{label}-{categories[0]}.jsonl"}
    else:  # --out is the folder of one predictions file a category
        folder = args.out or Path("runs") / "bfcl"
        outs = {c: folder / f"{label}-{c}.jsonl" for c in categories}
    try:
        results = bfcl_run.run_categories(
            args.model, categories, data=args.data, limit=args.n, outs=outs,
            tool_style=args.tool_style, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, device=args.device, constrained=args.constrained,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        rows = [r.to_dict() for r in results]
        print(json.dumps(rows[0] if len(rows) == 1 else {"results": rows}, ensure_ascii=False))
        return 0
    for result in results:
        print(result.summary())
        print(f"predictions: {result.predictions}")
    if len(results) > 1:
        correct, n = sum(r.correct for r in results), sum(r.n for r in results)
        print("bfcl " + "/".join(str(r.correct) for r in results)
              + f" ({', '.join(categories)}): {correct}/{n} entries")  # fmt: skip
    return 0


def _export(args: argparse.Namespace) -> int:
    from tooltune.export import ExportError, export

    try:
        result = export(args.run_dir, args.out_dir, dtype=args.dtype, tool_style=args.tool_style)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    for note in result.warnings:
        _say(f"warning: {note}")
    print(result.summary())
    return 0


def _train(args: argparse.Namespace) -> int:
    from tooltune.training.demo import run_train

    return run_train(args)


def _demo(args: argparse.Namespace) -> int:
    from tooltune.training.demo import run_demo

    return run_demo(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
