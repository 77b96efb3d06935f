"""The pipeline of ``python -m llm.plug_and_play --config CONFIG.yaml``: replace one agent of an LLM
team by a new model, aligned to the incumbent's trust region first (THEORY.md section 5; TeamTR's Stage-0
alignment, papers.md A.8; SAT Stage-0, papers.md B.5 and Part E item 15).

Steps:

1. Build the incumbent team from the base run config (``base_config:`` file or inline ``base:``,
   an ``llm.train`` config), optionally with the latest checkpointed weights of an ``llm.train``
   run directory (``incumbent_run:``; LoRA agents are saved merged for the continuation).
2. Team contexts for agent j: ``contexts.prompts`` task problems, ``contexts.group_size`` team
   rollouts each (:class:`llm.sampler.TeamSampler`, the incumbent team, on the backend of ``sampling:``
   built by :func:`llm.rollout.factory.make_backend`); agent j's messages are
   incumbent-sampled messages in their team contexts. They are split by problem into a training and
   a monitoring part (``contexts.monitor_fraction``).
3. Load the replacement (``replacement.model``; ``replacement.noise_std`` adds Gaussian noise to
   every weight, relative to each tensor's standard deviation, for demonstrations and tests). Both
   token-level methods need the incumbent's tokenizer: a different vocabulary raises
   :class:`TokenizerMismatchError` before anything else is done.
4. Measure the token KL(incumbent || replacement) on the monitoring messages: exactly over the
   vocabulary at every message position (policy = softmax(logits / T), T the sampling temperature),
   reported as the mean per token (``token_mean``) and as the TeamTR message sum (per message the
   sum over its tokens, averaged over messages: ``message_sum``); ``kl_reduction`` picks the one
   that is compared with ``delta0``.
5. Align (``method``):

   - ``distill``: forward distillation, teacher = incumbent: AdamW steps on the mean per-token
     KL(incumbent || new) over minibatches of the training messages, stopped as soon as the
     measured KL on the monitoring messages is <= delta0 (or after ``distill.max_steps``). This is
     the TeamTR trust-region quantity d_KL,tok(pi_inc || pi_new) <= delta_0 on incumbent-sampled
     messages, reached while staying as close to pi_pre as the early stop allows. The aligned model
     is saved (safetensors, with the tokenizer) to ``<output_dir>/aligned_agent``.
   - ``mix``: decoding-time geometric mixing of next-token distributions with lambda per prefix
     (:mod:`llm.rollout.mixing`; per-token KL(p_mix || p_inc) <= delta0 by construction); no weights
     change, so nothing is trained or saved and the continuation step is skipped.
   - ``direct``: no alignment (the direct-swap baseline).

6. Team score (mean team return on ``score.prompts`` held-out task problems, fixed seed) of the
   incumbent team, of the team with the direct swap, and of the team with the aligned swap; and,
   when an ``evaluate:`` section is given, the evaluation harness (:func:`llm.evaluate.harness.evaluate`)
   on the incumbent and the aligned teams (``<output_dir>/eval_incumbent``, ``eval_aligned``).
7. Continue training (``continue_stages`` > 0, ``distill`` and ``direct``): a run config for
   ``llm.train`` whose agent j is the aligned (or replacement) model is written to
   ``<output_dir>/continue.yaml`` and run into ``<output_dir>/continue`` (bookkeeping restarted,
   pi_cur <- pi_new, Prop 3.8; the incumbents' optimizer states are not carried over). Rerunning
   the command resumes that run.

Everything measured goes to ``<output_dir>/report.json`` (and the resolved config to
``config.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from llm.checkpoint import check_writable_dir, save_model_dir
from llm.config.build import to_plain
from llm.config.errors import ConfigError
from llm.data.tasks import Task, load_task
from llm.evaluate.config import EvalConfig
from llm.evaluate.harness import evaluate
from llm.export.run import load_checkpoint_weights, resolve_checkpoint
from llm.models import load_model, load_tokenizer, preflight
from llm.plug_and_play.config import PnPConfig
from llm.plug_and_play.distill import best_row, check_shared_tokenizer, distill, measure_kl, perturb_weights
from llm.rollout.factory import check_backend, make_backend
from llm.rollout.mixing import MixingBackend
from llm.sampler import TeamSampler
from llm.team import LLMTeam
from llm.train.config import config_from_dict
from llm.train.trainer import train


def load_incumbent_weights(team: LLMTeam, run_dir: Path) -> dict[int, str]:
    """Copy the latest checkpointed trainable parameters of an llm.train run into ``team``
    (:mod:`llm.export.run`, as ``llm.evaluate --run`` and ``llm.export`` read a run)."""
    try:
        chosen = resolve_checkpoint(run_dir, "latest", n_agents=len(team))
    except ConfigError as err:
        raise ConfigError(f"incumbent_run: {err}", key="incumbent_run") from None
    return load_checkpoint_weights(team, chosen)


def team_score(team, backend, problems, grader, sampling, group_size: int, seed: int) -> dict[str, float]:
    """Mean team return (the graded last message) over ``problems`` x ``group_size`` rollouts."""
    sampler = TeamSampler(backend, grader, temperature=sampling.temperature, top_p=sampling.top_p, seed=seed,
                          recompute_logprobs=False)
    batch = sampler.sample(team, list(problems), group_size)
    return {"score": sampler.last_stats.mean_score, "parsed_rate": sampler.last_stats.parsed_rate,
            "trajectories": len(problems) * group_size, "generated_tokens": sampler.last_stats.generated_tokens,
            "messages": len(batch)}


def _split_by_group(batch, monitor_fraction: float):
    groups = sorted(set(batch.group.tolist()))
    n_mon = max(1, int(round(len(groups) * monitor_fraction)))
    n_mon = min(n_mon, len(groups) - 1) if len(groups) > 1 else n_mon
    monitor = set(groups[len(groups) - n_mon:])
    is_mon = torch.tensor([g in monitor for g in batch.group.tolist()], dtype=torch.bool)
    if len(groups) == 1:  # a single problem: use its messages for both (reported)
        return batch, batch
    return batch.select(~is_mon), batch.select(is_mon)


def continuation_config(cfg: PnPConfig, agent_dir: Path, out: Path, team_dirs: dict[int, Path]) -> dict[str, Any]:
    """The llm.train run config of the continued training: agent j (and, with ``incumbent_run``,
    every trained incumbent) from the saved folders, ``continue_stages`` stages into out/continue."""
    d = copy.deepcopy(cfg.base_data)
    agents = d["team"]["agents"]
    j = cfg.agent_index
    for k, path in {**team_dirs, j: agent_dir}.items():
        agents[k]["model"] = str(path)
        agents[k].pop("tokenizer", None)
    d.setdefault("train", {})["stages"] = int(cfg.continue_stages)
    d["output_dir"] = str(out / "continue")
    return d


class Pipeline:
    """The steps of :func:`run` (module docstring), sharing the loaded team, task and backend."""

    def __init__(self, cfg: PnPConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.output_dir)
        base = cfg.base
        self.j = cfg.agent_index
        self.inc_spec = base.team.agents[self.j]
        self.rep_spec = dataclasses.replace(self.inc_spec, model=cfg.replacement.model,
                                            tokenizer=cfg.replacement.tokenizer, lora=None)
        # --- every check that can fail on bad input, before any weights are loaded
        check_writable_dir(self.out, remove_created=True)
        self.tokenizers = preflight(base.team)
        self.rep_tok = load_tokenizer(self.rep_spec)
        check_shared_tokenizer(self.tokenizers[self.j], self.rep_tok, cfg.method)
        check_backend(base.sampling)
        self.task: Task = load_task(base.task)
        n_ctx, n_score = cfg.contexts.prompts, cfg.score.prompts
        if n_ctx + n_score > len(self.task.problems):
            raise ConfigError(f"contexts.prompts + score.prompts = {n_ctx + n_score} exceeds the task's "
                              f"{len(self.task.problems)} problems (raise task.size)", key="contexts.prompts")
        self.report: dict[str, Any] = {"agent": self.inc_spec.name, "agent_index": self.j, "method": cfg.method,
                                       "delta0": cfg.delta0, "kl_reduction": cfg.kl_reduction,
                                       "replacement": dataclasses.asdict(cfg.replacement)}

    # ------------------------------------------------------------------ models
    def load(self) -> None:
        cfg, base = self.cfg, self.cfg.base
        torch.manual_seed(base.train.seed)
        self.team = LLMTeam.from_config(base.team, temperature=base.sampling.temperature, tokenizers=self.tokenizers)
        if cfg.incumbent_run is not None:
            self.report["incumbent_weights"] = load_incumbent_weights(self.team, Path(cfg.incumbent_run))
        self.incumbent = self.team[self.j].model
        self.replacement = self.new_replacement()
        self.backend = make_backend(base.sampling, self.team)

    def new_replacement(self) -> torch.nn.Module:
        model = load_model(self.rep_spec)
        perturb_weights(model, self.cfg.replacement.noise_std, self.cfg.replacement.noise_seed)
        model.eval()
        return model

    def swapped(self, model: torch.nn.Module) -> LLMTeam:
        """The team with agent j running ``model`` (the replacement's tokenizer and model spec)."""
        return self.team.with_agent(self.j, model, self.rep_tok, self.rep_spec)

    def backend_of(self, team: LLMTeam) -> Any:
        return make_backend(self.cfg.base.sampling, team)

    # ------------------------------------------------------------------ steps
    def contexts(self) -> None:
        """Incumbent-team rollouts; agent j's messages split by problem into training and monitoring."""
        cfg, base = self.cfg, self.cfg.base
        sampler = TeamSampler(self.backend, self.task.grader, temperature=base.sampling.temperature,
                              top_p=base.sampling.top_p, seed=cfg.contexts.seed, recompute_logprobs=False,
                              progress=self.progress)
        batch = sampler.sample(self.team, self.task.problems[:cfg.contexts.prompts], cfg.contexts.group_size)
        own = batch.select(batch.agent == self.j)
        self.train_b, self.monitor_b = _split_by_group(own, cfg.contexts.monitor_fraction)
        self.report["contexts"] = {"messages_train": len(self.train_b), "messages_monitor": len(self.monitor_b),
                                   "team_score_of_context_rollouts": sampler.last_stats.mean_score}
        if self.tokenizers[self.j].get_vocab() == self.rep_tok.get_vocab():  # always for distill and mix
            self.report["kl_before"] = measure_kl(self.incumbent, self.replacement, self.monitor_b,
                                                  base.sampling.temperature, self.team[self.j].pad_token_id)

    def align(self) -> Path | None:
        """distill (in place) and save, or save the direct replacement; mix changes nothing."""
        cfg = self.cfg
        if cfg.method == "distill":
            history = distill(self.replacement, self.incumbent, self.train_b, self.monitor_b, cfg.distill,
                              cfg.delta0, cfg.kl_reduction, cfg.base.sampling.temperature,
                              self.team[self.j].pad_token_id, seed=cfg.contexts.seed, progress=self.progress)
            best = best_row(history, cfg.kl_reduction)
            self.report["distill_history"] = history
            self.report["kl_after"] = {k: v for k, v in best.items() if k not in ("step", "loss")}
            self.report["distill_steps"] = history[-1]["step"]
            self.report["distill_kept_step"] = best["step"]
            self.report["aligned"] = bool(best[cfg.kl_reduction] <= cfg.delta0)
        if cfg.method == "mix":
            return None
        aligned_dir = self.out / ("aligned_agent" if cfg.method == "distill" else "replacement_agent")
        save_model_dir(self.replacement, self.rep_tok, aligned_dir)
        self.report["saved_agent"] = str(aligned_dir)
        return aligned_dir

    def mixing_backend(self) -> MixingBackend:
        cfg = self.cfg
        return MixingBackend(self.backend, self.j, self.replacement, self.incumbent,
                             self.team[self.j].eos_token_ids, self.team[self.j].pad_token_id, cfg.delta0,
                             iters=cfg.mix.iters, batch_size=cfg.mix.batch_size)

    def scores(self) -> None:
        """Team score of the incumbent team, the direct swap and the aligned swap."""
        cfg, task = self.cfg, self.task
        if cfg.score.prompts <= 0:
            self.report["team_score"] = {}
            return
        problems = task.problems[len(task.problems) - cfg.score.prompts:]

        def score(team: LLMTeam, backend: Any) -> dict[str, float]:
            return team_score(team, backend, problems, task.grader, cfg.base.sampling, cfg.score.group_size,
                              cfg.score.seed)

        scores = {"incumbent": score(self.team, self.backend)}
        if cfg.method == "distill":
            dteam = self.swapped(self.new_replacement())
            scores["direct"] = score(dteam, self.backend_of(dteam))
            del dteam
        swapped = self.swapped(self.replacement)
        if cfg.method == "mix":
            scores["direct"] = score(swapped, self.backend_of(swapped))
            mix = self.mixing_backend()
            scores["aligned"] = score(swapped, mix)
            self.report["mix_stats"] = mix.stats.summary()
        else:
            scores["aligned" if cfg.method == "distill" else "direct"] = score(swapped, self.backend_of(swapped))
        self.report["team_score"] = scores

    def _evaluate(self, team: LLMTeam, backend: Any, name: str) -> dict[str, Any]:
        section = dataclasses.replace(self.cfg.evaluate, output_dir=str(self.out / f"eval_{name}"))
        config = EvalConfig(team=self.cfg.base.team, eval=section, sampling=self.cfg.base.sampling)
        return evaluate(config, team=team, backend=backend)

    def evaluations(self) -> None:
        if self.cfg.evaluate is None:
            return
        self.report["eval_incumbent"] = self._evaluate(self.team, self.backend, "incumbent")
        swapped = self.swapped(self.replacement)
        backend = self.mixing_backend() if self.cfg.method == "mix" else self.backend_of(swapped)
        self.report["eval_aligned"] = self._evaluate(swapped, backend, "aligned")

    def continue_training(self, aligned_dir: Path | None) -> None:
        """llm.train from the swapped team (``continue_stages`` > 0; not for mix)."""
        cfg, out = self.cfg, self.out
        if cfg.continue_stages <= 0:
            return
        if aligned_dir is None:
            self.report["continue"] = {"skipped": "method 'mix' changes no weights; distill the mixture "
                                                  "(method: distill) to continue training"}
            return
        team_dirs: dict[int, Path] = {}
        for k in self.report.get("incumbent_weights", {}):
            if k != self.j:
                team_dirs[k] = out / "team" / f"agent{k}"
                model = self.team[k].model
                if hasattr(model, "merge_and_unload"):  # LoRA: save the merged full model
                    model = model.merge_and_unload()
                save_model_dir(model, self.team[k].tokenizer, team_dirs[k])
        cont = continuation_config(cfg, aligned_dir, out, team_dirs)
        (out / "continue.yaml").write_text(yaml.safe_dump(cont, sort_keys=False), encoding="utf-8")
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
        del self.team, self.backend, self.replacement, self.incumbent
        result = train(config_from_dict(copy.deepcopy(cont)))
        self.report["continue"] = {"output_dir": str(result.output_dir), "updates_done": result.updates_done,
                                   "stages": [{"stage": r.stage, "batch_mean_returns": r.batch_mean_returns,
                                               "updates": [{"agent": u.agent, "kl": u.kl, "n_rejected": u.n_rejected}
                                                           for u in r.updates]} for r in result.reports]}

    def write_report(self) -> None:
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2, default=str), encoding="utf-8")


def run(cfg: PnPConfig, progress: bool = True) -> dict[str, Any]:
    """Run the plug-and-play pipeline (module docstring); returns the report (also report.json)."""
    pipe = Pipeline(cfg, progress)
    pipe.out.mkdir(parents=True, exist_ok=True)
    (pipe.out / "config.yaml").write_text(yaml.safe_dump(plain_config(cfg), sort_keys=False), encoding="utf-8")
    t0 = time.time()
    pipe.load()
    pipe.contexts()
    aligned_dir = pipe.align()
    pipe.scores()
    pipe.evaluations()
    pipe.report["seconds_alignment_and_scores"] = time.time() - t0
    pipe.write_report()  # the measurements so far survive a failure of the continuation
    pipe.continue_training(aligned_dir)
    pipe.report["seconds_total"] = time.time() - t0
    pipe.write_report()
    return pipe.report


def plain_config(cfg: PnPConfig) -> dict[str, Any]:
    d = to_plain(cfg)
    d.pop("base")
    d["base"] = d.pop("base_data")
    return d


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"agent {report['agent']} replaced ({report['method']}, delta0 = {report['delta0']:g}, "
             f"{report['kl_reduction']})"]
    for key in ("kl_before", "kl_after"):
        if key in report:
            k = report[key]
            lines.append(f"{key}: token_mean {k['token_mean']:.4g}, message_sum {k['message_sum']:.4g}, "
                         f"token_max {k['token_max']:.4g} ({k['messages']} messages, {k['tokens']} tokens)")
    if "distill_steps" in report:
        lines.append(f"distillation steps: {report['distill_steps']}, kept the weights of step "
                     f"{report['distill_kept_step']} (aligned: {report['aligned']})")
    for name, s in report.get("team_score", {}).items():
        lines.append(f"team score [{name}]: {s['score']:.3f} over {s['trajectories']} trajectories")
    if "mix_stats" in report:
        lines.append(f"mixing: {report['mix_stats']}")
    if "continue" in report:
        lines.append(f"continue: {report['continue'].get('output_dir', report['continue'].get('skipped'))}")
    return lines
