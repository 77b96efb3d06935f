"""The trainer of ``python -m llm.train --config CONFIG.yaml``: sequential trust-region training of an LLM team.

What a run does:

1. Reads the YAML into a validated :class:`llm.train.config.RunConfig` and resolves the core's
   :class:`trust_region.stage.StageConfig` from it (:meth:`RunConfig.stage_config`); loads the task (problems + grader) and checks
   every agent (model path, tokenizer, chat template) - all before any model weights are loaded.
2. Loads the team (one model, tokenizer and AdamW per agent), a generation backend and the
   :class:`llm.sampler.TeamSampler`, then runs ``train.stages`` stages through
   :func:`trust_region.stage.run_stage` (every mode of the core).
3. Writes into ``output_dir``:

   - ``config.yaml``: the resolved config (run config + core StageConfig);
   - ``metrics.jsonl``: one line per agent update (``agent{j}/...`` keys from the core's
     UpdateReport, ``rollout/...`` keys: generation cost and the sampled-vs-recomputed log-prob
     gap of the rollouts made for it) and one line per stage (``stage/...``);
   - ``checkpoints/agent{j}/weights-uNNNNNN.safetensors`` (trainable parameters only; LoRA: the
     adapters) and ``optim-uNNNNNN.pt`` (the agent's AdamW state, loaded with weights_only=True);
   - ``cursor.json``: stage, updates done, per-agent checkpoint files, betas, RNG states (stage
     rng, sampler, prompt source, torch), and mid-stage progress (order, prompts, current batch);
   - ``tb/``: TensorBoard scalars when ``tensorboard: true``.

   Every file is written atomically (temp file, then ``os.replace``); the cursor is written last,
   and files it no longer references are deleted afterwards, so a kill at any point leaves a
   consistent run directory.
4. Resuming (the default when ``output_dir`` holds a cursor): the team is rebuilt from the config,
   the checkpointed weights, optimizer states, betas and RNG states are loaded and training
   continues at the next agent update. A ``metrics.jsonl`` that ends in a truncated line (disk
   full, crash) is repaired: the partial line is dropped with a warning.

The run-directory file formats are :mod:`llm.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from llm.checkpoint import (
    CURSOR,
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write_text,
    check_writable_dir,
    json_floats,
    load_batch,
    load_trainable,
    read_cursor,
    report_from_dict,
    save_batch,
    write_cursor,
)
from llm.config.build import to_plain
from llm.config.errors import ConfigError
from llm.data.contamination import ContaminationError, check_against_benchmarks
from llm.data.jsonl import read_jsonl
from llm.data.tasks import PromptSource, Task, load_task
from llm.models import preflight
from llm.rollout.factory import check_backend, make_backend
from llm.sampler import TeamSampler
from llm.team import LLMTeam
from llm.train.config import RunConfig, load_config
from trust_region.stage import StageProgress, StageReport, UpdateReport, run_stage

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the trainer
@dataclass
class TrainResult:
    team: LLMTeam
    reports: list[StageReport]
    output_dir: Path
    updates_done: int
    sampler: TeamSampler
    resumed_from: int | None = None  # updates done when the run was resumed (None: fresh run)


@dataclass
class _State:
    stage: int = 0
    updates_done: int = 0
    agent_files: dict[int, dict[str, str]] = field(default_factory=dict)
    betas: list[float] | None = None
    progress: dict[str, Any] | None = None


class Trainer:
    """Owns a run directory. ``on_update_hook(updates_done)`` is called after every checkpointed
    update (tests raise from it to simulate a kill)."""

    def __init__(self, config: RunConfig, output_dir: str | Path | None = None,
                 on_update_hook: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.output_dir = Path(output_dir if output_dir is not None else config.output_dir)
        self.on_update_hook = on_update_hook
        # --- everything that can fail on bad input, before any model is loaded
        self.stage_config = config.stage_config()
        check_writable_dir(self.output_dir)
        self.task: Task = load_task(config.task)
        if config.task.contamination_policy != "off":
            try:
                check_against_benchmarks(self.task.problems, policy=config.task.contamination_policy)
            except ContaminationError as err:
                raise ConfigError(f"task: training problems overlap evaluation benchmarks: {err}") from err
        ids = [p.id for p in self.task.problems]
        if len(set(ids)) != len(ids):
            raise ConfigError("task: problem ids are not unique (set task.id_field to a unique column)")
        self.problems_by_id = {p.id: p for p in self.task.problems}
        self.tokenizers = preflight(config.team)
        check_backend(config.sampling, config.team.agents, trust_region=math.isfinite(config.train.stage.update.delta))
        self.team: LLMTeam | None = None

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.train.seed)
        self.remote = None
        if cfg.placement == "ray":  # one actor group per agent; the driver holds proxies
            from llm.distributed.placement import start_remote_team

            self.remote = start_remote_team(cfg.team, cfg.sampling.temperature, cfg.sampling, cfg.train.seed,
                                            cfg.ray, tokenizers=self.tokenizers)
            self.team, self.optimizers, self.backend = self.remote.team, self.remote.optimizers, self.remote.backend
        else:
            self.team = LLMTeam.from_config(cfg.team, temperature=cfg.sampling.temperature, tokenizers=self.tokenizers)
            self.optimizers = self.team.make_optimizers()
            self.backend = make_backend(cfg.sampling, self.team)
        self.sampler = TeamSampler(self.backend, self.task.grader, temperature=cfg.sampling.temperature,
                                   top_p=cfg.sampling.top_p, seed=cfg.train.seed + 1,
                                   recompute_logprobs=cfg.sampling.recompute_logprobs, progress=cfg.progress)
        self.sampler.mark_synced(self.team)  # the backend starts from the loaded weights
        self.prompt_source = PromptSource(self.task.problems, seed=cfg.train.seed + 2)
        self.rng = np.random.default_rng(cfg.train.seed)

    def resolved_config(self) -> dict[str, Any]:
        d = to_plain(self.config)
        d["output_dir"] = str(self.output_dir)
        d["resolved_stage_config"] = to_plain(self.stage_config)
        return d

    def _check_same_run(self) -> None:
        saved = yaml.safe_load((self.output_dir / "config.yaml").read_text(encoding="utf-8"))
        now = self.resolved_config()
        for d in (saved, now):
            d.get("train", {}).pop("stages", None)
            for k in ("output_dir", "tensorboard", "progress", "placement", "ray"):  # either placement resumes
                d.pop(k, None)
        if json.dumps(json_floats(saved), sort_keys=True, default=str) != json.dumps(
            json_floats(yaml.safe_load(yaml.safe_dump(now))), sort_keys=True, default=str
        ):
            raise ConfigError(f"{self.output_dir} holds a run with a different config; use another output_dir "
                              "or --no-resume (only train.stages may change when resuming)")

    # ------------------------------------------------------------------ checkpoints
    def _save_agent(self, j: int, tag: int) -> dict[str, str]:
        agent = self.team[j]
        d = self.output_dir / "checkpoints" / f"agent{j}"
        w = d / f"weights-u{tag:06d}.safetensors"
        o = d / f"optim-u{tag:06d}.pt"
        if self.remote is not None:  # written by the agent's actor (rank 0), same format
            agent.save(str(w), str(o), {"agent": agent.name})
        else:
            atomic_save_safetensors(w, dict(agent.named_trainable_parameters()), metadata={"agent": agent.name})
            atomic_torch_save(o, self.optimizers[j].state_dict())
        return {"weights": str(w.relative_to(self.output_dir)), "optimizer": str(o.relative_to(self.output_dir))}

    def _load_agent(self, j: int, files: dict[str, str]) -> None:
        if self.remote is not None:
            self.team[j].load(str(self.output_dir / files["weights"]), str(self.output_dir / files["optimizer"]))
            return
        load_trainable(self.team[j], self.output_dir / files["weights"], f"checkpoint {files['weights']}")
        state = torch.load(self.output_dir / files["optimizer"], weights_only=True, map_location="cpu")
        self.optimizers[j].load_state_dict(state)

    def _rng_states(self) -> dict[str, Any]:
        return {
            "stage_rng": self.rng.bit_generator.state,
            "sampler": self.sampler.state_dict(),
            "prompt_source": self.prompt_source.state_dict(),
            "torch": torch.get_rng_state().tolist(),
        }

    def _set_rng_states(self, s: dict[str, Any]) -> None:
        self.rng.bit_generator.state = s["stage_rng"]
        self.sampler.load_state_dict(s["sampler"])
        self.prompt_source.load_state_dict(s["prompt_source"])
        torch.set_rng_state(torch.tensor(s["torch"], dtype=torch.uint8))

    def _write_cursor(self, state: _State, rng_states: dict[str, Any]) -> None:
        write_cursor(self.output_dir, {
            "version": 1,
            "stage": state.stage,
            "updates_done": state.updates_done,
            "agents": {str(j): f for j, f in state.agent_files.items()},
            "betas": state.betas,
            "rng": rng_states,
            "progress": state.progress,
            "time": time.time(),
        })
        self._collect_garbage(state)

    def _collect_garbage(self, state: _State) -> None:
        keep = {str(self.output_dir / f) for files in state.agent_files.values() for f in files.values()}
        progress_dir = state.progress.get("batch_dir") if state.progress else None
        for path in (self.output_dir / "checkpoints").glob("agent*/*"):
            if str(path) not in keep and not path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
        for path in (self.output_dir / "checkpoints").glob("progress-u*"):
            if progress_dir is None or path.name != Path(progress_dir).name:
                for f in path.iterdir():
                    f.unlink()
                path.rmdir()

    def _load_cursor(self) -> _State:
        c = read_cursor(self.output_dir)
        state = _State(stage=c["stage"], updates_done=c["updates_done"],
                       agent_files={int(j): f for j, f in c["agents"].items()}, betas=c["betas"],
                       progress=c["progress"])
        for j, files in state.agent_files.items():
            self._load_agent(j, files)
        self._set_rng_states(c["rng"])
        return state

    # ------------------------------------------------------------------ metrics
    def _open_logs(self, resumed: _State | None) -> None:
        """Open metrics.jsonl; on resume drop the lines written after the cursor (a kill between
        logging and writing the cursor would otherwise duplicate them) and a truncated last line."""
        path = self.output_dir / "metrics.jsonl"
        if resumed is not None and path.is_file():
            def skipped(lineno: int, line: str) -> None:
                log.warning("%s:%d: dropped a truncated line (interrupted write): %.60s", path, lineno, line)

            kept = []
            for _, row in read_jsonl(path, what="metrics file", skip_bad=True, on_skip=skipped):
                if "agent" in row and row["update"] <= resumed.updates_done:
                    kept.append(row)
                elif "agent" not in row and row["stage"] < resumed.stage:
                    kept.append(row)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resumed is None and path.exists():
            path.unlink()
        self._metrics = path.open("a", encoding="utf-8")
        self._tb = None
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency (tensorboard)

            self._tb = SummaryWriter(str(self.output_dir / "tb"))

    def _log(self, row: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(json_floats(row)) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            step = int(row.get("update", 0))
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def _rollout_metrics(self) -> dict[str, float]:
        new = self.sampler.history[self._history_seen:]
        self._history_seen = len(self.sampler.history)
        out: dict[str, float] = {"rollout/sample_calls": float(len(new))}
        if not new:
            return out
        out["rollout/generate_calls"] = float(sum(s.generate_calls for s in new))
        out["rollout/generated_tokens"] = float(sum(s.generated_tokens for s in new))
        out["rollout/reused_tokens"] = float(sum(s.reused_tokens for s in new))
        out["rollout/mean_score"] = float(np.mean([s.mean_score for s in new]))
        out["rollout/parsed_rate"] = float(np.mean([s.parsed_rate for s in new]))
        gaps = [s for s in new if s.logp_gap_mean_abs is not None]
        if gaps:
            out["rollout/logp_gap_mean_abs"] = float(np.mean([s.logp_gap_mean_abs for s in gaps]))
            out["rollout/logp_gap_max_abs"] = float(max(s.logp_gap_max_abs for s in gaps))
            out["rollout/logp_gap_mean"] = float(np.mean([s.logp_gap_mean for s in gaps]))
            out["rollout/logp_gap_message_mean_abs"] = float(np.mean([s.logp_gap_message_mean_abs for s in gaps]))
        return out

    def _update_row(self, stage: int, updates_done: int, report: UpdateReport) -> dict[str, Any]:
        row: dict[str, Any] = {"stage": stage, "update": updates_done, "position": report.position,
                               "agent": report.agent, "agent_name": self.team[report.agent].name, "time": time.time()}
        row.update(report.to_dict(prefix=True))
        row.update(self._rollout_metrics())
        return row

    # ------------------------------------------------------------------ progress (mid-stage state)
    def _progress_to_json(self, p: StageProgress, tag: int) -> dict[str, Any]:
        keep_batch = p.batch is not None and not (self.stage_config.mode == "intermediate"
                                                  and not self.stage_config.prefix_reuse)
        d = {
            "stage": p.stage, "order": list(p.order), "prompts": [q.id for q in p.prompts],
            "next_index": p.next_index, "betas": list(p.betas), "batch_start": p.batch_start,
            "updates": [dataclasses.asdict(u) for u in p.updates], "sample_calls": p.sample_calls,
            "resample_calls": p.resample_calls, "trajectories_generated": p.trajectories_generated,
            "tokens_generated": p.tokens_generated, "batch_mean_returns": list(p.batch_mean_returns),
            "batch_dir": None,
        }
        if keep_batch:
            bdir = self.output_dir / "checkpoints" / f"progress-u{tag:06d}"
            save_batch(bdir, p.batch)
            d["batch_dir"] = str(bdir.relative_to(self.output_dir))
        return d

    def _progress_from_json(self, d: dict[str, Any]) -> StageProgress:
        batch = load_batch(self.output_dir / d["batch_dir"], self.problems_by_id) if d["batch_dir"] else None
        return StageProgress(
            stage=d["stage"], order=list(d["order"]), prompts=[self.problems_by_id[i] for i in d["prompts"]],
            next_index=d["next_index"], betas=list(d["betas"]), batch=batch, batch_start=d["batch_start"],
            updates=[report_from_dict(u) for u in d["updates"]], sample_calls=d["sample_calls"],
            resample_calls=d["resample_calls"], trajectories_generated=d["trajectories_generated"],
            tokens_generated=d["tokens_generated"], batch_mean_returns=list(d["batch_mean_returns"]),
        )

    # ------------------------------------------------------------------ run
    def _start(self, resume: bool) -> tuple[_State, int | None]:
        """Build the team; load the cursor (resume) or clear an old one (fresh run)."""
        has_cursor = (self.output_dir / CURSOR).is_file()
        if has_cursor and resume:
            self._check_same_run()
        self._build()
        if has_cursor and resume:
            state = self._load_cursor()
            return state, state.updates_done
        if has_cursor:
            (self.output_dir / CURSOR).unlink()
        state = _State()
        self._collect_garbage(state)
        return state, None

    def run(self, resume: bool = True) -> TrainResult:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state, resumed_from = self._start(resume)
        atomic_write_text(self.output_dir / "config.yaml", yaml.safe_dump(self.resolved_config(), sort_keys=False))
        self._open_logs(state if resumed_from is not None else None)
        self._history_seen = 0
        reports: list[StageReport] = []
        show = self.config.progress
        bar = tqdm(total=self.config.train.stages * len(self.team), initial=state.updates_done, desc="agent updates",
                   unit="update", disable=not show)
        steps = tqdm(desc="optimizer steps", unit="step", leave=False, disable=not show)
        hooks = [opt.register_step_post_hook(lambda *_: steps.update(1)) for opt in self.optimizers]
        try:
            while state.stage < self.config.train.stages:
                stage = state.stage
                resume_from = self._progress_from_json(state.progress) if state.progress is not None else None
                report = run_stage(self.team, self.optimizers, self.sampler, self.prompt_source,
                                   self.stage_config, self.rng, betas=state.betas, stage=stage,
                                   on_update=self._make_on_update(state, bar), resume=resume_from)
                state.stage = stage + 1
                state.betas = list(report.betas)
                state.progress = None
                self._log({"stage": stage, "update": state.updates_done, "time": time.time(),
                           **{k: v for k, v in report.to_dict().items() if k.startswith("stage/")}})
                self._write_cursor(state, self._rng_states())
                reports.append(report)
        finally:
            for hook in hooks:
                hook.remove()
            steps.close()
            bar.close()
            self._metrics.close()
            close_backend = getattr(self.backend, "close", None)  # vLLM engines hold memory and processes
            if callable(close_backend):
                close_backend()
            if self.remote is not None:
                self.remote.shutdown()
            if self._tb is not None:
                self._tb.close()
        return TrainResult(self.team, reports, self.output_dir, state.updates_done, self.sampler, resumed_from)

    def _make_on_update(self, state: _State, bar: Any) -> Callable[[StageProgress], None]:
        def on_update(progress: StageProgress) -> None:
            i = progress.next_index - 1
            j = progress.order[i]
            state.updates_done += 1
            tag = state.updates_done
            self._log(self._update_row(progress.stage, tag, progress.updates[-1]))
            state.agent_files[j] = self._save_agent(j, tag)
            state.betas = list(progress.betas)
            state.progress = self._progress_to_json(progress, tag)
            self._write_cursor(state, self._rng_states())
            bar.update(1)
            if self.on_update_hook is not None:
                self.on_update_hook(tag)

        return on_update


def train(config: RunConfig | str | Path, output_dir: str | Path | None = None, resume: bool = True,
          on_update_hook: Callable[[int], None] | None = None) -> TrainResult:
    """Run (or resume) training; see the module docstring."""
    if not isinstance(config, RunConfig):
        config = load_config(config)
    return Trainer(config, output_dir, on_update_hook).run(resume=resume)
