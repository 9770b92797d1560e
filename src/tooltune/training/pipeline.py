"""The training pipeline: evaluate (before) -> SFT -> evaluate -> reward model -> GRPO -> evaluate
-> report, in any environment: the built-in world or a user's `tooltune.ToolEnv` (tasks by split
and group, per-episode tools, verification, rubric, SFT data; see `tooltune.env`). The reward
model learns from the SFT'd policy's verified episodes on training tasks (see `reward_stage`);
with `reward_baseline = "learned"` it is GRPO's baseline.

Every stage ends with an atomic checkpoint (`state.json` is replaced only after the files it
points to are complete); SFT also checkpoints every `sft_checkpoint_minutes` and GRPO every
`checkpoint_every` steps, so a run that is killed resumes where its last checkpoint left off: no
step is lost from the record or repeated in it, and the resumed steps are those an unstopped run
takes. Evaluation always runs on held-out test tasks, greedily, through the real tools.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tooltune.allocator import release_free_memory
from tooltune.chat_format import IM_END
from tooltune.config import AgentConfig, ConfigError, data_seed_of
from tooltune.messages import read_trajectories, write_trajectories
from tooltune.prompt_format import PromptFormat, missing_message
from tooltune.rollout import (
    SamplingParams,
    TrajectoryCollector,
    tokenize_trajectory,
    trajectory_segments,
)
from tooltune.training import reward_stage
from tooltune.training.run_dir import RunDirectory, load_policy, write_atomic
from tooltune.training.settings import PipelineSettings
from tooltune.training.tracking import (
    make_tracker,
    peak_gpu_memory_gb,
    peak_memory_gb,
)

STAGES = ("data", "before", "sft", "after_sft", "reward_model", "grpo", "after_grpo")


class AgentTrainingPipeline:
    """Complete pipeline for agent training in an environment (see the module docstring)."""

    def __init__(
        self,
        env: Any,
        config: AgentConfig,
        settings: PipelineSettings,
        run_dir: str | Path,
        log: Callable[[str], None] = print,
        progress: bool = True,
    ) -> None:
        reward_stage.check_settings(config, settings)  # a learned baseline needs a reward model
        check_environment(env, settings)
        if hasattr(env, "config"):
            env.config = config  # the registries' timeouts and limits are this run's
        self.env = env
        self.config = config
        self.settings = settings
        self.run = RunDirectory(Path(run_dir))
        self.run.tracker = make_tracker(settings.report_to, run_dir,
                                        {"config": config.to_dict(), "pipeline": asdict(settings)})  # fmt: skip
        self.log = log
        self.progress = progress
        self.policy: Any = None
        self.compile_failed = False  # `torch_compile` tried and failed: not tried again
        self.sft_source = ""  # what SFT learned from, for the report ("40 expert demonstrations")
        # a resumed run's time: its earlier processes' (each to its last checkpoint), and how many
        self.earlier_seconds, self.processes = 0.0, 1
        self._started = time.perf_counter()
        self.history: dict[str, list[float]] = {"loss": [], "reward": [], "success_rate": []}

    # -- tasks ----------------------------------------------------------------------------------
    def _tasks(self, split: str, n: int, seed: int, per_tier: bool = False) -> list[Any]:
        return self.env.sample_tasks(split, n, seed=seed, per_group=per_tier)

    def test_tasks(self) -> list[Any]:
        return self._tasks(
            "test", self.settings.eval_tasks_per_tier, self.config.seed + 1, per_tier=True
        )

    # -- the run ----------------------------------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        """Run (or resume) every stage; returns the metrics of the three evaluations."""
        self._started = time.perf_counter()
        state = self.run.load_state()
        if state is None:
            state = {"completed": [], "metrics": {}, "history": self.history, "grpo_step": 0,
                     "config": self.config.to_dict(), "settings": asdict(self.settings),
                     "environment": self.env.describe()}  # fmt: skip
            (self.run.dir / "metrics.jsonl").unlink(missing_ok=True)
        else:
            self._check_same_run(state)
            self.history = state["history"]
            done, step = set(state["completed"]), state["grpo_step"]
            in_sft = "sft" in done or state.get("sft_step", 0) > 0
            # the copy drill's row belongs to the SFT stage it runs in
            self.run.trim("metrics.jsonl", lambda r: r["stage"] in done
                          or (r["stage"] == "copy_drill" and in_sft)
                          or (r["stage"] == "grpo" and r["step"] < step))  # fmt: skip
            self.run.trim("trajectories.jsonl", lambda r: r["metadata"].get("stage") in done)
            self.log(
                f"resuming {self.run.dir} after stage {state['completed'][-1] if state['completed'] else 'start'}"
            )
        self.earlier_seconds = state.get("seconds", 0.0)
        if set(STAGES) - set(state["completed"]):  # one that only rewrites the report: not counted
            state["processes"] = state.get("processes", 0) + 1
        self.processes = state.get("processes", 1)
        write_atomic(self.run.dir / "config.json", json.dumps(
            {"config": self.config.to_dict(), "pipeline": asdict(self.settings)}, indent=2))  # fmt: skip

        demos = self._stage_data(state)
        for stage in STAGES[1:]:
            if stage in state["completed"]:
                continue
            started = time.perf_counter()
            if stage == "after_grpo" and not self.settings.grpo_steps:
                state["metrics"][stage] = state["metrics"]["after_sft"]  # the same weights
            elif stage in ("before", "after_sft", "after_grpo"):
                state["metrics"][stage] = self._evaluate(stage)
            elif stage == "sft":
                self._sft(demos, state)
            elif stage == "reward_model" and self.settings.reward_model_tasks:
                state["metrics"][stage] = reward_stage.run_stage(self)
            elif stage == "grpo":
                self._grpo(state)
            state["completed"].append(stage)
            state["history"] = self.history
            state["checkpoint"] = self.run.checkpoint("latest", self.policy)
            self._save_state(state)
            release_free_memory()  # what this stage's sizes kept would add to the next one's peak
            peak, gpu = peak_memory_gb(), peak_gpu_memory_gb()  # gpu: None without CUDA
            parts = [f"peak memory so far {peak:.1f} GB"] if peak else []
            parts += [f"GPU peak {gpu:.1f} GB"] if gpu is not None else []
            memory = f" ({', '.join(parts)})" if parts else ""
            self.log(f"[{stage}] done in {time.perf_counter() - started:.0f} s{memory}")
        if self.run.tracker is not None:
            self.run.tracker.close()
        return state["metrics"]

    def _save_state(self, state: dict[str, Any]) -> None:
        """state.json with the run's time so far: its earlier processes' and this one's."""
        state["seconds"] = self.earlier_seconds + time.perf_counter() - self._started
        self.run.save_state(state)

    def _check_same_run(self, state: dict[str, Any]) -> None:
        """A run resumes only with its own configuration. A setting the saved run does not
        name (it predates the setting) counts as that setting's default."""
        saved_config, saved_settings = state.get("config", {}), state.get("settings", {})
        if not isinstance(saved_config, dict) or not isinstance(saved_settings, dict):
            raise ConfigError(f"{self.run.dir}/state.json holds no readable configuration; "
                              "use another --out or --fresh")  # fmt: skip
        saved = {**type(self.config)().to_dict(), **saved_config}
        saved_settings = {**asdict(PipelineSettings()), **saved_settings}
        now = {**asdict(self.settings), "report_to": None}  # where metrics go is no part of it
        differ = [k for k, v in self.config.to_dict().items() if saved.get(k) != v]
        differ += [f"pipeline.{k}" for k, v in now.items()
                   if k != "report_to" and saved_settings.get(k) != v]  # fmt: skip
        if differ:
            raise ConfigError(f"{self.run.dir} holds a run with another configuration "
                              f"({', '.join(differ)} differ); use another --out or --fresh")  # fmt: skip
        if "environment" in state and state["environment"] != self.env.describe():
            raise ConfigError(f"{self.run.dir} holds a run in another environment "
                              f"({state['environment']}); use another --out or --fresh")  # fmt: skip

    # -- stage: data (expert demonstrations, tokenizer, initial model) -------------------------
    def _stage_data(self, state: dict[str, Any]) -> list[Any]:
        demos_path = self.run.dir / "demonstrations.jsonl"
        if "data" in state["completed"]:
            self.policy = self._load_checkpoint(state["checkpoint"])
            self.sft_source = state.get("sft_source", "")
            return read_trajectories(demos_path)
        started = time.perf_counter()
        demos, source = self.env.demonstrations(), "demonstrations"
        if demos is None and self.env.expert() is not None:
            source = "expert demonstrations"
            tasks = self._tasks("train", self.settings.sft_tasks, self.config.seed)
            demos = self._collect_expert(tasks)
        if demos is None:  # rejection sampling: the model's own verified successes
            source = "verified successes of the model's own"
            self.policy = self._new_policy([])
            self.policy.prompt_format = self._prompt_format()
            demos = self._own_successes()
        else:
            self.policy = self._new_policy(demos)
            self.policy.prompt_format = self._prompt_format()  # saved with every checkpoint
        write_trajectories(demos_path, demos)
        self.sft_source = state["sft_source"] = f"{len(demos)} {source}"
        state["completed"].append("data")
        state["checkpoint"] = self.run.checkpoint("latest", self.policy)
        self._save_state(state)
        self.log(f"[data] {len(demos)} {source}, model with "
                 f"{sum(p.numel() for p in self.policy.parameters()):,} parameters "
                 f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
        return demos

    def _collect_expert(self, tasks: list[Any]) -> list[Any]:
        """The expert's verified episodes of `tasks` (its failures are left out, and said)."""
        from tooltune.env_data import collect_successes

        demos, total = collect_successes(self.env.expert(), self.env, tasks, self.config,
                                         self.settings.tool_style,
                                         bar=self._bar(len(tasks), "expert demonstrations"))  # fmt: skip
        if len(demos) < total:
            self.log(f"warning: the expert failed {total - len(demos)} of {total} tasks; "
                     "they are left out")  # fmt: skip
        return demos

    def _own_successes(self) -> list[Any]:
        """Rejection sampling: `num_generations` episodes of the new model on each training task
        (up to `sft_tasks`) at the configured temperature; the verified ones are the SFT data."""
        from tooltune.env_data import collect_successes

        cfg = self.config
        tasks = self._tasks("train", self.settings.sft_tasks, cfg.seed)
        tasks = list({t.id: t for t in tasks}.values())  # each once, num_generations times
        sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)  # fmt: skip
        self.policy.eval()
        kept, total = collect_successes(self.policy, self.env, tasks, cfg, self.settings.tool_style,
                                        num_samples=cfg.num_generations, sampling=sampling,
                                        bar=self._bar(len(tasks), "own episodes"))  # fmt: skip
        self.log(f"[data] rejection sampling: {len(kept)} of {total} episodes verified")
        if not kept:
            raise ConfigError(
                "the model solved none of the training tasks on its own, so there is nothing "
                "to fine-tune on: give the environment demonstrations= or expert=, or raise "
                "num_generations / temperature"
            )
        return kept

    def _new_policy(self, demos: list[Any]) -> Any:
        s = self.settings
        if s.model == "builtin":
            from tooltune.policies import BuiltinPolicy

            rename = self._rename()
            if rename is None:
                texts = ["".join(text for text, _ in trajectory_segments(d, s.tool_style))
                         for d in demos]  # fmt: skip
            else:  # no name is frequent enough to become one token: names split into syllables
                texts = ["".join(text for text, _ in trajectory_segments(rename(d), s.tool_style))
                         for d in demos for _ in range(2)]  # fmt: skip
            return BuiltinPolicy.create(texts, size=s.model_size, seed=self.config.seed,
                                        vocab_size=s.vocab_size, max_seq_len=s.max_seq_len,
                                        copy_head=s.copy_head)  # fmt: skip
        from tooltune.policies import HFPolicy, LoraSettings, load_smollm2
        from tooltune.policies.hf import describe_compute

        path = load_smollm2() if s.model == "smollm2-135m" else s.model
        lora = LoraSettings(top_layers=s.train_layers, dropout=s.lora_dropout)
        policy = HFPolicy.from_pretrained(path, lora=lora if s.lora else None,
                                          dtype=s.dtype, device=self._device(),
                                          marker_tokens=s.marker_tokens)  # fmt: skip
        self._restrict_training(policy)
        self.log(f"[model] {path}: {describe_compute(policy)}")
        self._compile(policy)
        return policy

    def _restrict_training(self, policy: Any) -> None:
        """Full fine-tuning of the top `train_layers` layers only (LoRA places its adapters
        there itself); a checkpoint loads with every weight trainable, so it runs after loads too."""
        s = self.settings
        if s.model != "builtin" and not s.lora and s.train_layers:
            from tooltune.policies.hf import train_top_layers

            try:
                train_top_layers(policy.model, s.train_layers, keep_embeddings=s.marker_tokens)
            except ValueError as exc:
                raise ConfigError(f"pipeline.train_layers: {exc}") from exc

    def _device(self) -> str:
        from tooltune.policies.hf import default_device

        device = self.settings.device or default_device()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device here")
        return device

    def _prompt_format(self) -> PromptFormat:
        s = self.settings
        marker_tokens = s.marker_tokens and s.model != "builtin"
        return PromptFormat.from_training(self.config, s.tool_style, marker_tokens)

    def _load_checkpoint(self, relative: str) -> Any:
        """The policy of a checkpoint, with the prompt format it was saved with (one saved
        before formats were recorded gets this run's, which trained it)."""
        directory = self.run.checkpoint_dir(relative)
        if not (directory / "COMPLETE").exists():
            raise ConfigError(f"checkpoint {directory} is incomplete; rerun with --fresh")
        policy = load_policy(directory / "policy", self.settings.dtype, self._device())
        expected = self._prompt_format()
        if policy.prompt_format is None:
            self.log(f"warning: {missing_message(directory / 'policy')}; this run's is used: "
                     f"{expected.describe()}")  # fmt: skip
            policy.prompt_format = expected
        elif policy.prompt_format != expected:
            raise ConfigError(
                f"{directory / 'policy'} was prompted with {policy.prompt_format.describe()}, "
                f"but this run prompts with {expected.describe()}; rerun with --fresh"
            )
        self._restrict_training(policy)
        self._compile(policy)
        return policy

    def _compile(self, policy: Any) -> None:
        """`torch_compile`: compile the layers' element-wise parts, once per process."""
        from tooltune.policies import pointwise

        if not self.settings.torch_compile or self.settings.model == "builtin":
            return
        if not pointwise.COMPILED and not self.compile_failed:
            why = pointwise.compile_pointwise(policy.compute_dtype, policy.device)
            self.log("[model] element-wise parts (norms, rotary, SiLU gate) compiled by "
                     "torch.compile" if why is None else "[model] element-wise parts stay "
                     f"eager: torch.compile failed ({why})")  # fmt: skip
            self.compile_failed = why is not None

    # -- stage: evaluation -----------------------------------------------------------------------
    def _evaluate(self, stage: str) -> dict[str, Any]:
        from tooltune.evaluation import evaluate, summary_line

        tasks, groups = self.test_tasks(), list(self.env.groups)
        if stage == "before" and self.settings.before_tasks_per_tier:
            tasks = [t for g in groups for t in
                     [t for t in tasks if t.group == g][: self.settings.before_tasks_per_tier]]  # fmt: skip
        self.policy.eval()
        constrained = self.settings.constrained_calls
        result = evaluate(self.policy, tasks, self.env, self.config, groups=groups,
                          tool_style=self.settings.tool_style, progress=self.progress,
                          constrained_calls=constrained)  # fmt: skip
        metrics = {k: v for k, v in result.items() if k != "trajectories"}
        self._save_samples(stage, result.get("trajectories", []))
        heldout = []
        if self.settings.heldout_tools_tasks:
            heldout = self._tasks(
                "heldout_tools", self.settings.heldout_tools_tasks, self.config.seed + 3
            )
        if heldout:
            other = evaluate(self.policy, heldout, self.env, self.config,
                             tool_style=self.settings.tool_style, progress=self.progress,
                             constrained_calls=constrained)  # fmt: skip
            metrics["heldout_tools"] = {"accuracy": other["accuracy"]["overall"],
                                        "n_tasks": other["n_tasks"]}  # fmt: skip
        self.run.log_metrics({"stage": stage, **_flat(metrics)})
        self.log(f"[{stage}] {summary_line(metrics)}")
        return metrics

    def _save_samples(self, stage: str, trajectories: list[Any]) -> None:
        keep = []
        for group in self.env.groups:
            of_group = [t for t in trajectories if str(t.task_tier) == group]
            keep += of_group[: self.settings.saved_trajectories]
        for t in keep:
            t.metadata["stage"] = stage
            t.tokens = None  # token ids are for training; the file is for people and other tools
        write_trajectories(self.run.dir / "trajectories.jsonl", keep, append=True)

    # -- stage: SFT ------------------------------------------------------------------------------
    def _rename(self) -> Callable[[Any], Any] | None:
        """Renames the entities of a demonstration (see `tasks.augment`), or None when off."""
        if not self.settings.rename_entities:
            return None
        return self.env.augmenter(random.Random(self.config.seed))

    def _copy_drill(self) -> None:
        """Teach the model to copy spans from its context before it sees a demonstration."""
        from tooltune.chat_format import render_prompt
        from tooltune.tasks.augment import copy_drills
        from tooltune.training.sft import train_sft
        from tooltune.types import TokenRecord

        batch = 32
        pairs = copy_drills(self.settings.copy_drill_steps * batch, random.Random(self.config.seed))
        records = []
        for user, reply in pairs:
            record = TokenRecord()
            record.extend(
                self.policy.encode(render_prompt([{"role": "user", "content": user}])), False
            )
            record.extend(self.policy.encode(reply + IM_END), True)
            records.append(record)
        history = train_sft(self.policy, records, self.config, epochs=1, batch_size=batch,
                            progress=self.progress)  # fmt: skip
        first, last = history.step_loss[:20], history.step_loss[-20:]
        start, end = sum(first) / len(first), sum(last) / len(last)  # means of 20 steps
        self.log(f"[sft] copy drill: {len(history.step_loss)} steps, loss {start:.2f} -> {end:.2f}")
        self.run.log_metrics({"stage": "copy_drill", "steps": len(history.step_loss),
                              "loss_start": start, "loss_end": end})  # fmt: skip

    def _sft(self, demos: list[Any], state: dict[str, Any]) -> None:
        from tooltune.training.sft import SFTProgress, train_sft

        resume = None
        if state.get("sft_step", 0) > 0:  # the weights are the checkpoint's already
            path = self.run.dir / state["checkpoint"] / "trainer.pt"
            try:
                saved = torch.load(path, map_location="cpu", weights_only=False)
                resume = SFTProgress.from_dict(saved["sft"])
            except Exception as exc:  # a damaged file: say which, and how to go on
                raise ConfigError(f"cannot read SFT's progress from {path} ({exc!r}); "
                                  "rerun with --fresh to start over") from exc  # fmt: skip
            self.log(f"[sft] resuming after step {resume.step}")
        elif self.settings.copy_drill_steps and self.settings.model == "builtin":
            self._copy_drill()
        val_tasks = self._tasks("validation", self.settings.val_tasks, self.config.seed + 2)
        expert = val_tasks and self.env.expert() is not None
        val_demos = self._collect_expert(val_tasks) if expert else []
        val_records = [tokenize_trajectory(d, self.policy.encode, self.settings.tool_style)
                       for d in val_demos]  # fmt: skip

        def after_epoch(epoch: int, policy: Any) -> dict[str, Any]:
            metrics: dict[str, Any] = {}
            if val_tasks:
                from tooltune.evaluation import evaluate

                result = evaluate(policy, val_tasks, self.env, self.config,
                                  tool_style=self.settings.tool_style, progress=False,
                                  constrained_calls=self.settings.constrained_calls)  # fmt: skip
                metrics = {"val_accuracy": result["accuracy"]}
            return metrics

        def checkpoint(progress: SFTProgress) -> None:
            state["sft_step"] = progress.step
            state["checkpoint"] = self.run.checkpoint("latest", self.policy,
                                                      {"sft": progress.to_dict()})  # fmt: skip
            self._save_state(state)

        history = train_sft(self.policy, demos, self.config, val_records,
                            max_len=self.settings.max_seq_len, callback=after_epoch, log=self.log,
                            progress=self.progress, tool_style=self.settings.tool_style,
                            augment=self._rename(), checkpoint=checkpoint,
                            checkpoint_minutes=self.settings.sft_checkpoint_minutes, resume=resume)  # fmt: skip
        state.pop("sft_step", None)  # the stage's own checkpoint follows
        per = len(history.step_loss) // max(1, len(history.train_loss))  # the report plots steps
        for epoch, loss in enumerate(history.train_loss):
            last = epoch + 1 == len(history.train_loss)
            row = {"stage": "sft", "epoch": epoch + 1, "train_loss": loss,
                   "val_loss": history.val_loss[epoch], **_flat(history.epoch_metrics[epoch]),
                   "step_loss": history.step_loss[epoch * per : None if last else (epoch + 1) * per]}  # fmt: skip
            self.run.log_metrics(row)
            self.history["loss"].append(loss)
            acc = history.epoch_metrics[epoch].get("val_accuracy", {})
            if "overall" in acc:
                self.history["success_rate"].append(acc["overall"])
        self.run.checkpoint("sft", self.policy)

    # -- stage: GRPO (the loop: `grpo_loop.train_grpo`) ------------------------------------------
    def _grpo(self, state: dict[str, Any]) -> None:
        from tooltune.training.grpo_loop import GRPOStep, collector_rollout, train_grpo

        cfg, s = self.config, self.settings
        if s.grpo_steps == 0:
            return
        trainer = self._grpo_trainer(state)
        collector = self._grpo_collector()
        play = collector_rollout(collector)

        def rollout(tasks: list[Any], num_generations: int, seed: int) -> list[Any]:
            if s.backend == "ray":  # the workers play the weights the last update left
                collector.push_policy(self.policy)
            return play(tasks, num_generations, seed)

        bar = self._bar(s.grpo_steps, "GRPO", initial=state["grpo_step"])

        def on_step(done: GRPOStep) -> None:
            self.history["loss"].append(done.metrics["loss"])
            self.history["reward"].append(done.metrics["mean_reward"])
            self.history["success_rate"].append(done.metrics["success_rate"])
            errors = getattr(self.env, "reward_errors", None) or {}
            self.run.log_metrics({"stage": "grpo", "step": done.step, **done.metrics,
                                  **{f"reward_errors.{k}": v for k, v in errors.items()}})  # fmt: skip
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{done.metrics['mean_reward']:.2f}",
                                success=f"{done.metrics['success_rate']:.0%}")  # fmt: skip

        def checkpoint(steps_done: int) -> None:
            if steps_done == s.grpo_steps:
                return  # the stage's own checkpoint follows
            state["grpo_step"], state["history"] = steps_done, self.history
            extra = {"optimizer": trainer.optimizer.state_dict(),
                     "scheduler": trainer.scheduler.state_dict()}  # fmt: skip
            state["checkpoint"] = self.run.checkpoint("latest", self.policy, extra)
            self._save_state(state)

        try:
            train_grpo(trainer, self._grpo_tasks, rollout, s.grpo_steps, start=state["grpo_step"],
                       seed=cfg.seed, on_step=on_step, checkpoint=checkpoint,
                       checkpoint_every=s.checkpoint_every)  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
            if s.backend == "ray":
                collector.shutdown()
        state["grpo_step"] = s.grpo_steps

    def _grpo_tasks(self, step: int) -> list[Any]:
        seed = data_seed_of(self.config)
        return self._tasks("train", self.config.batch_size, seed=seed * 100_003 + 7919 * (step + 1))

    def _grpo_trainer(self, state: dict[str, Any]) -> Any:
        """The trainer, with the optimizer and schedule of the checkpoint a run resumes from."""
        from tooltune.training.grpo import GRPOTrainer
        from tooltune.training.optim import AdamW
        from tooltune.training.schedule import make_scheduler

        cfg, s = self.config, self.settings
        resumed = state["grpo_step"] > 0
        source = self._load_checkpoint("checkpoints/sft") if resumed else self.policy
        reference = source.clone()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(optimizer, s.grpo_steps, cfg.warmup_ratio)
        if resumed:
            saved = torch.load(  # optimizer state moves to its parameters' device on load
                self.run.dir / state["checkpoint"] / "trainer.pt", map_location="cpu",
                weights_only=False,
            )  # fmt: skip
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        baseline = reward_stage.baseline_fn(self) if cfg.reward_baseline == "learned" else None
        return GRPOTrainer(self.policy, reference, optimizer, cfg, scheduler=scheduler,
                           max_len=s.max_seq_len, baseline_fn=baseline)  # fmt: skip

    def _grpo_collector(self) -> Any:
        """Plays the GRPO episodes: in this process, or in Ray actors (`backend = "ray"`)."""
        from tooltune.training.rewards import rubric_from_config, verified_success

        cfg, s = self.config, self.settings
        fmt = self.policy.prompt_format  # a resumed run's is the checkpoint's
        sampling = SamplingParams(temperature=fmt.temperature, top_p=fmt.top_p,
                                  max_new_tokens=fmt.max_new_tokens)  # fmt: skip
        if s.backend == "ray":
            from tooltune.distributed.ray_backend import make_ray_backend

            rubric = rubric_from_config(cfg, outcome=verified_success)
            return make_ray_backend(
                self.policy, cfg, num_workers=s.ray_workers, address=s.ray_address or None,
                world_dir=self.env.world_dir, sampling=sampling, reward_fn=rubric.apply,
            )  # fmt: skip
        return TrajectoryCollector(self.policy, self.env.registry, cfg, sampling=sampling,
                                   tool_style=fmt.tool_style, reward_fn=self.env.rubric(cfg).apply)  # fmt: skip

    def _bar(self, total: int, desc: str, initial: int = 0) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, initial=initial, dynamic_ncols=True)


def check_environment(env: Any, settings: PipelineSettings) -> None:
    """Refuse, before any training, what this environment cannot do with these settings."""
    if not hasattr(env, "expert"):  # no environment (a pipeline built to check its settings)
        return
    is_builtin = hasattr(env, "world_dir")
    if settings.backend == "ray" and not is_builtin:
        raise ConfigError("backend ray runs the built-in world only; use backend local")
    given = (getattr(env, "demonstrations_path", None) is not None or env.expert() is not None
             or getattr(env, "demonstration_rows", None) is not None)  # fmt: skip
    if settings.model == "builtin" and not given:
        raise ConfigError(
            "the built-in model is trained from scratch and cannot find successes on its own: "
            "give the environment demonstrations= or expert=, or train a pretrained model "
            "(--model smollm2-135m or a Hugging Face model directory)"
        )


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
