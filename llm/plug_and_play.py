"""``python -m llm.plug_and_play --config CONFIG.yaml``: replace one agent of an LLM team by a new
model, aligned to the incumbent's trust region first (THEORY.md section 5; TeamTR's Stage-0
alignment, papers.md A.8; SAT Stage-0, papers.md B.5 and Part E item 15).

Steps:

1. Build the incumbent team from the base run config (``base_config:`` file or inline ``base:``,
   an ``llm.train`` config), optionally with the latest checkpointed weights of an ``llm.train``
   run directory (``incumbent_run:``; LoRA agents are saved merged for the continuation).
2. Team contexts for agent j: ``contexts.prompts`` task problems, ``contexts.group_size`` team
   rollouts each (:class:`llm.sampler.TeamSampler`, the incumbent team); agent j's messages are
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
     (:mod:`llm.logits_mixing`; per-token KL(p_mix || p_inc) <= delta0 by construction); no weights
     change, so nothing is trained or saved and the continuation step is skipped.
   - ``direct``: no alignment (the direct-swap baseline).

6. Team score (mean team return on ``score.prompts`` held-out task problems, fixed seed) of the
   incumbent team, of the team with the direct swap, and of the team with the aligned swap; and,
   when an ``evaluate:`` section is given, the evaluation harness (:func:`llm.evaluate.evaluate`)
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

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from torch import Tensor

from llm.config import ConfigError, RunConfig, config_from_dict, config_to_dict

METHODS = ("distill", "mix", "direct")
KL_REDUCTIONS = ("token_mean", "message_sum")


class TokenizerMismatchError(ConfigError):
    """The replacement's tokenizer differs from the incumbent's: token-level KL, distillation on
    token distributions and logit mixing are undefined across vocabularies."""


# ---------------------------------------------------------------------------- config
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ReplacementSection:
    """The new model: ``model`` (hub id, local path or ``builtin:smollm2``), optional ``tokenizer``
    (default: the model's), ``noise_std`` >= 0 (relative Gaussian weight noise) and ``noise_seed``."""

    model: str
    tokenizer: str | None = None
    noise_std: float = 0.0
    noise_seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.model, str) and bool(self.model), "replacement.model must be a hub id or a local path")
        _check(self.noise_std >= 0 and math.isfinite(self.noise_std),
               f"replacement.noise_std must be finite and >= 0, got {self.noise_std}")


@dataclass(frozen=True)
class ContextsSection:
    """Team contexts for the alignment: ``prompts`` >= 2 problems x ``group_size`` >= 1 rollouts,
    ``monitor_fraction`` in (0, 1) of the problems held out for the KL measurement."""

    prompts: int = 8
    group_size: int = 2
    monitor_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.prompts >= 2, f"contexts.prompts must be >= 2, got {self.prompts}")
        _check(self.group_size >= 1, f"contexts.group_size must be >= 1, got {self.group_size}")
        _check(0 < self.monitor_fraction < 1, f"contexts.monitor_fraction must be in (0, 1), got {self.monitor_fraction}")


@dataclass(frozen=True)
class DistillSection:
    """Distillation: at most ``max_steps`` AdamW steps (``lr`` > 0, ``weight_decay`` >= 0,
    ``max_grad_norm`` > 0 or None) on minibatches of ``batch_size`` messages; the KL is measured
    every ``eval_every`` steps."""

    max_steps: int = 100
    lr: float = 1e-4
    batch_size: int = 4
    eval_every: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        _check(self.max_steps >= 0, f"distill.max_steps must be >= 0, got {self.max_steps}")
        _check(self.lr > 0, f"distill.lr must be > 0, got {self.lr}")
        _check(self.batch_size >= 1, f"distill.batch_size must be >= 1, got {self.batch_size}")
        _check(self.eval_every >= 1, f"distill.eval_every must be >= 1, got {self.eval_every}")
        _check(self.weight_decay >= 0, f"distill.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0,
               f"distill.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")


@dataclass(frozen=True)
class MixSection:
    """Decoding-time mixing: ``iters`` bisection steps per token, ``batch_size`` prompts per generate."""

    iters: int = 40
    batch_size: int = 16

    def __post_init__(self) -> None:
        _check(self.iters >= 1, f"mix.iters must be >= 1, got {self.iters}")
        _check(self.batch_size >= 1, f"mix.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ScoreSection:
    """Team score: ``prompts`` >= 0 held-out task problems (the last ones of the task; 0 disables)
    x ``group_size`` >= 1 rollouts, sampler seed ``seed`` (the same for every team compared)."""

    prompts: int = 8
    group_size: int = 1
    seed: int = 12345

    def __post_init__(self) -> None:
        _check(self.prompts >= 0, f"score.prompts must be >= 0, got {self.prompts}")
        _check(self.group_size >= 1, f"score.group_size must be >= 1, got {self.group_size}")


@dataclass(frozen=True)
class PnPConfig:
    """A plug-and-play run (see the module docstring). ``base``: the validated base run config;
    ``base_data``: the same as plain data (used to write the continuation config)."""

    base: RunConfig
    base_data: dict[str, Any]
    agent: str | int
    replacement: ReplacementSection
    method: str = "distill"
    delta0: float = 0.01
    kl_reduction: str = "token_mean"
    contexts: ContextsSection = field(default_factory=ContextsSection)
    distill: DistillSection = field(default_factory=DistillSection)
    mix: MixSection = field(default_factory=MixSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    evaluate: dict[str, Any] | None = None
    continue_stages: int = 1
    incumbent_run: str | None = None
    output_dir: str = "runs/plug_and_play"

    def __post_init__(self) -> None:
        _check(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        _check(self.kl_reduction in KL_REDUCTIONS, f"kl_reduction must be one of {KL_REDUCTIONS}, got {self.kl_reduction!r}")
        _check(math.isfinite(self.delta0) and self.delta0 > 0, f"delta0 must be finite and > 0, got {self.delta0}")
        _check(self.continue_stages >= 0, f"continue_stages must be >= 0, got {self.continue_stages}")
        names = self.base.team.names
        if isinstance(self.agent, int) and not isinstance(self.agent, bool):
            _check(0 <= self.agent < len(names), f"agent must be an index in [0, {len(names)}) or a name in {names}, "
                                                 f"got {self.agent}")
        else:
            _check(self.agent in names, f"agent must be an index or one of the team's names {names}, got {self.agent!r}")
        if self.evaluate is not None:
            _check(isinstance(self.evaluate, dict) and "benchmarks" in self.evaluate,
                   "evaluate must be an eval section (a mapping with 'benchmarks'; see llm.evaluate) or null")

    @property
    def agent_index(self) -> int:
        return self.agent if isinstance(self.agent, int) else self.base.team.names.index(self.agent)


_SECTIONS = {"replacement": ReplacementSection, "contexts": ContextsSection, "distill": DistillSection,
             "mix": MixSection, "score": ScoreSection}


def pnp_config_from_dict(data: dict[str, Any], root: Path | None = None) -> PnPConfig:
    """Validated :class:`PnPConfig` from plain data; ``base_config`` paths are relative to ``root``
    (the YAML file's folder) when not found as given."""
    if not isinstance(data, dict):
        raise ConfigError("the plug-and-play config must be a mapping at the top level")
    data = dict(data)
    known = {f.name for f in dataclasses.fields(PnPConfig)} - {"base_data"} | {"base_config"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"plug-and-play config: unknown key(s) {unknown}; allowed: {sorted(known)}")
    if ("base" in data) == ("base_config" in data):
        raise ConfigError("give exactly one of base_config (a run config file) and base (an inline run config)")
    if "base_config" in data:
        path = Path(str(data.pop("base_config"))).expanduser()
        if not path.is_file() and root is not None and (root / path).is_file():
            path = root / path
        if not path.is_file():
            raise ConfigError(f"base_config file not found: {path}")
        base_data = yaml.safe_load(path.read_text(encoding="utf-8"))
    else:
        base_data = data.pop("base")
    if not isinstance(base_data, dict):
        raise ConfigError("base must be a run config mapping (team, task, sampling, train)")
    data["base"] = config_from_dict(copy.deepcopy(base_data))
    data["base_data"] = copy.deepcopy(base_data)
    if "replacement" not in data:
        raise ConfigError("replacement is required (replacement.model: the new model)")
    for name, cls in _SECTIONS.items():
        value = data.get(name)
        if name != "replacement" and value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping")
        allowed = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(value) - allowed)
        if bad:
            raise ConfigError(f"{name}: unknown key(s) {bad}; allowed: {sorted(allowed)}")
        try:
            data[name] = cls(**value)
        except TypeError as err:
            raise ConfigError(f"{name}: {err}") from err
    try:
        return PnPConfig(**data)
    except TypeError as err:
        raise ConfigError(f"plug-and-play config: {err}") from err


def load_pnp_config(path: str | Path) -> PnPConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return pnp_config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), root=path.parent)


# ---------------------------------------------------------------------------- models
def check_shared_tokenizer(incumbent: Any, replacement: Any, method: str) -> None:
    """Raise :class:`TokenizerMismatchError` when the two tokenizers' vocabularies (or EOS) differ
    and ``method`` works on token distributions (``distill``, ``mix``)."""
    if method not in ("distill", "mix"):
        return
    va, vb = incumbent.get_vocab(), replacement.get_vocab()
    if va != vb or incumbent.eos_token_id != replacement.eos_token_id:
        only_a = len(set(va) - set(vb))
        only_b = len(set(vb) - set(va))
        moved = sum(1 for k in set(va) & set(vb) if va[k] != vb[k])
        raise TokenizerMismatchError(
            f"method {method!r} compares next-token distributions and needs the incumbent's tokenizer, but the "
            f"replacement's differs (vocab sizes {len(va)} vs {len(vb)}; {only_a} tokens only in the incumbent's, "
            f"{only_b} only in the replacement's, {moved} with other ids; EOS {incumbent.eos_token_id} vs "
            f"{replacement.eos_token_id}). Use a replacement of the same tokenizer family (e.g. Qwen2.5 -> Qwen3) "
            "or method: direct")


@torch.no_grad()
def perturb_weights(model: torch.nn.Module, std: float, seed: int) -> None:
    """Add N(0, (std * sd(W))^2) noise to every floating-point parameter W in place (tied weights once)."""
    if std <= 0:
        return
    g = torch.Generator().manual_seed(int(seed))
    for p in model.parameters():
        if p.is_floating_point() and p.numel() > 1:
            scale = float(p.detach().float().std())
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * (std * scale)
            p.add_(noise.to(p.device, p.dtype))


def message_logprobs(model: torch.nn.Module, contexts: Sequence[Tensor], messages: Sequence[Tensor],
                     temperature: float, pad_id: int, vocab: int | None = None) -> list[Tensor]:
    """Full next-token log-probabilities at every message position: one (L_r, V) tensor per row
    (log_softmax(logits / T), V cut to ``vocab``), for messages teacher-forced after their contexts.
    Differentiable when grad is enabled."""
    device = next(model.parameters()).device
    lengths = [len(m) for m in messages]
    t_max = max(lengths)
    seqs = [torch.cat([c, m]) for c, m in zip(contexts, messages)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = s
        attn[r, width - len(s):] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                   logits_to_keep=t_max + 1).logits[:, :-1]
    if vocab is not None:
        logits = logits[..., :vocab]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (R, t_max, V)
    return [logp[r, t_max - n:] for r, n in enumerate(lengths)]


def _rows(batch) -> tuple[list[Tensor], list[Tensor]]:
    ctx = [batch.context[i][batch.context_mask[i]] for i in range(len(batch))]
    msg = [batch.tokens[i][batch.mask[i]] for i in range(len(batch))]
    return ctx, msg


def _token_kls(teacher: list[Tensor], student: list[Tensor]) -> list[Tensor]:
    """Per row, KL(teacher || student) at every position (L_r,)."""
    return [(t.exp() * (t - s)).sum(-1) for t, s in zip(teacher, student)]


@torch.no_grad()
def measure_kl(incumbent: torch.nn.Module, new: torch.nn.Module, batch, temperature: float, pad_id: int,
               micro_batch: int = 4) -> dict[str, float]:
    """Exact token KL(incumbent || new) on the messages of ``batch`` (all rows): ``token_mean``
    (mean over tokens), ``message_sum`` (per-message sum over tokens, mean over messages), ``token_max``."""
    ctx, msg = _rows(batch)
    vocab = _shared_vocab(incumbent, new)
    per_msg: list[Tensor] = []
    for s in range(0, len(msg), micro_batch):
        c, m = ctx[s:s + micro_batch], msg[s:s + micro_batch]
        t = message_logprobs(incumbent, c, m, temperature, pad_id, vocab)
        q = message_logprobs(new, c, m, temperature, pad_id, vocab)
        per_msg += [k.double().cpu() for k in _token_kls(t, q)]
    allk = torch.cat(per_msg)
    return {"token_mean": float(allk.mean()), "message_sum": float(torch.stack([k.sum() for k in per_msg]).mean()),
            "token_max": float(allk.max()), "messages": len(per_msg), "tokens": int(allk.numel())}


def _shared_vocab(a: torch.nn.Module, b: torch.nn.Module) -> int:
    return min(a.get_output_embeddings().weight.shape[0], b.get_output_embeddings().weight.shape[0])


def distill(new: torch.nn.Module, incumbent: torch.nn.Module, train_batch, monitor_batch, cfg: DistillSection,
            delta0: float, reduction: str, temperature: float, pad_id: int, seed: int = 0,
            progress: bool = False) -> list[dict[str, float]]:
    """Forward distillation (teacher = incumbent) of ``new`` in place until the monitored KL
    (``reduction`` of :func:`measure_kl` on ``monitor_batch``) is <= delta0 or ``cfg.max_steps``.
    Returns the history: one row per measurement (step 0 = before any step).

    Early stopping on the monitored messages: ``new`` ends with the weights of the measurement with
    the lowest monitored KL (:func:`best_row` of the history; the last one when delta0 was reached).
    With few training messages distillation overfits them and the monitored KL can rise again."""
    ctx, msg = _rows(train_batch)
    vocab = _shared_vocab(incumbent, new)
    params = [p for p in new.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    history = [{"step": 0, "loss": math.nan, **measure_kl(incumbent, new, monitor_batch, temperature, pad_id)}]
    best_value, best_state = history[0][reduction], _trainable_copy(new)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, desc="distill", unit="step")
    step = 0
    was = new.training
    try:
        while history[-1][reduction] > delta0 and step < cfg.max_steps:
            step += 1
            idx = rng.choice(len(msg), size=min(cfg.batch_size, len(msg)), replace=False)
            c, m = [ctx[i] for i in idx], [msg[i] for i in idx]
            with torch.no_grad():
                teacher = message_logprobs(incumbent, c, m, temperature, pad_id, vocab)
            new.train()
            student = message_logprobs(new, c, m, temperature, pad_id, vocab)
            new.eval()
            loss = torch.cat(_token_kls([t.to(s.device) for t, s in zip(teacher, student)], student)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            if bar is not None:
                bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                history.append({"step": step, "loss": float(loss.detach()),
                                **measure_kl(incumbent, new, monitor_batch, temperature, pad_id)})
                if history[-1][reduction] < best_value:
                    best_value, best_state = history[-1][reduction], _trainable_copy(new)
    finally:
        new.train(was)
        if bar is not None:
            bar.close()
    if history[-1][reduction] > best_value:  # the last measurement is not the best: go back to it
        with torch.no_grad():
            for p, saved in zip((p for p in new.parameters() if p.requires_grad), best_state):
                p.copy_(saved.to(p.device))
    return history


def best_row(history: list[dict[str, float]], reduction: str) -> dict[str, float]:
    """The first measurement of a :func:`distill` history with the lowest monitored KL."""
    return min(history, key=lambda row: row[reduction])


def _trainable_copy(model: torch.nn.Module) -> list[torch.Tensor]:
    """CPU copies of the trainable parameters (the early-stopping snapshot)."""
    return [p.detach().to("cpu", copy=True) for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------- the pipeline
def _load_incumbent_weights(team, run_dir: Path) -> dict[int, str]:
    """Copy the latest checkpointed trainable parameters of an llm.train run into ``team``."""
    from safetensors.torch import load_file

    cursor = run_dir / "cursor.json"
    if not cursor.is_file():
        raise ConfigError(f"incumbent_run: {run_dir} holds no llm.train cursor.json")
    files = json.loads(cursor.read_text(encoding="utf-8"))["agents"]
    loaded = {}
    for j, agent_files in files.items():
        agent = team[int(j)]
        tensors = load_file(str(run_dir / agent_files["weights"]))
        params = dict(agent.named_trainable_parameters())
        if set(params) != set(tensors):
            raise ConfigError(f"incumbent_run: {agent_files['weights']} does not match agent {agent.name}'s parameters")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[n].to(p.device, p.dtype))
        loaded[int(j)] = agent_files["weights"]
    return loaded


def swapped_team(team, j: int, model: torch.nn.Module, tokenizer: Any):
    """A new LLMTeam sharing every agent of ``team`` except agent j, which runs ``model`` with the
    incumbent's role, temperature and limits."""
    from llm.agent import LLMAgent
    from llm.team import LLMTeam

    old = team[j]
    agents = list(team.agents)
    agents[j] = LLMAgent(agent_id=j, name=old.name, model=model, tokenizer=tokenizer, system_prompt=old.system_prompt,
                         temperature=old.temperature, micro_batch_size=old.micro_batch_size,
                         max_new_tokens=old.max_new_tokens, chat_template_kwargs=old.chat_template_kwargs)
    return LLMTeam(agents, team.router, team.protocol, team.config)


def team_score(team, backend, problems, grader, sampling, group_size: int, seed: int) -> dict[str, float]:
    """Mean team return (the graded last message) over ``problems`` x ``group_size`` rollouts."""
    from llm.sampler import TeamSampler

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


def _run_eval(cfg: PnPConfig, team, backend, name: str, out: Path) -> dict[str, Any]:
    from llm.evaluate import eval_config_from_dict, evaluate

    section = dict(cfg.evaluate)
    section["output_dir"] = str(out / f"eval_{name}")
    section.setdefault("progress", False)
    ec = eval_config_from_dict({"team": cfg.base_data["team"], "sampling": cfg.base_data.get("sampling"),
                                "eval": section})
    return evaluate(ec, team=team, backend=backend)


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


def run(cfg: PnPConfig, progress: bool = True) -> dict[str, Any]:
    """Run the plug-and-play pipeline (module docstring); returns the report (also report.json)."""
    from llm.rollout.hf import HFBackend
    from llm.sampler import TeamSampler
    from llm.tasks import load_task
    from llm.team import LLMTeam, load_model, load_tokenizer, preflight

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(_plain_config(cfg), sort_keys=False), encoding="utf-8")
    base = cfg.base
    j = cfg.agent_index
    inc_spec = base.team.agents[j]
    rep_spec = dataclasses.replace(inc_spec, model=cfg.replacement.model, tokenizer=cfg.replacement.tokenizer,
                                   lora=None)
    # --- every check that can fail on bad input, before any weights are loaded
    tokenizers = preflight(base.team)
    rep_tok = load_tokenizer(rep_spec)
    check_shared_tokenizer(tokenizers[j], rep_tok, cfg.method)
    task = load_task(base.task)
    n_ctx, n_score = cfg.contexts.prompts, cfg.score.prompts
    if n_ctx + n_score > len(task.problems):
        raise ConfigError(f"contexts.prompts + score.prompts = {n_ctx + n_score} exceeds the task's "
                          f"{len(task.problems)} problems (raise task.size)")
    report: dict[str, Any] = {"agent": inc_spec.name, "agent_index": j, "method": cfg.method, "delta0": cfg.delta0,
                              "kl_reduction": cfg.kl_reduction, "replacement": dataclasses.asdict(cfg.replacement)}
    t0 = time.time()
    torch.manual_seed(base.train.seed)
    team = LLMTeam.from_config(base.team, temperature=base.sampling.temperature, tokenizers=tokenizers)
    if cfg.incumbent_run is not None:
        report["incumbent_weights"] = _load_incumbent_weights(team, Path(cfg.incumbent_run))
    incumbent = team[j].model
    replacement = load_model(rep_spec)
    perturb_weights(replacement, cfg.replacement.noise_std, cfg.replacement.noise_seed)
    replacement.eval()
    temperature = base.sampling.temperature
    pad_id = team[j].pad_token_id
    backend = HFBackend.from_team(team, batch_size=base.sampling.batch_size)

    # --- team contexts of agent j (incumbent team rollouts)
    sampler = TeamSampler(backend, task.grader, temperature=temperature, top_p=base.sampling.top_p,
                          seed=cfg.contexts.seed, recompute_logprobs=False)
    batch = sampler.sample(team, task.problems[:n_ctx], cfg.contexts.group_size)
    own = batch.select(batch.agent == j)
    train_b, monitor_b = _split_by_group(own, cfg.contexts.monitor_fraction)
    report["contexts"] = {"messages_train": len(train_b), "messages_monitor": len(monitor_b),
                          "team_score_of_context_rollouts": sampler.last_stats.mean_score}
    if _same_vocab(tokenizers[j], rep_tok):  # always true for distill and mix (checked above)
        report["kl_before"] = measure_kl(incumbent, replacement, monitor_b, temperature, pad_id)

    # --- alignment
    aligned_dir = None
    mix_backend = None
    if cfg.method == "distill":
        history = distill(replacement, incumbent, train_b, monitor_b, cfg.distill, cfg.delta0, cfg.kl_reduction,
                          temperature, pad_id, seed=cfg.contexts.seed, progress=progress)
        best = best_row(history, cfg.kl_reduction)
        report["distill_history"] = history
        report["kl_after"] = {k: v for k, v in best.items() if k not in ("step", "loss")}
        report["distill_steps"] = history[-1]["step"]
        report["distill_kept_step"] = best["step"]
        report["aligned"] = bool(best[cfg.kl_reduction] <= cfg.delta0)
    if cfg.method in ("distill", "direct"):
        aligned_dir = out / ("aligned_agent" if cfg.method == "distill" else "replacement_agent")
        _save_model(replacement, rep_tok, aligned_dir)
        report["saved_agent"] = str(aligned_dir)

    # --- team scores: incumbent, direct swap, aligned swap
    scores: dict[str, Any] = {}
    if n_score > 0:
        problems = task.problems[len(task.problems) - n_score:]

        def score(t, b):
            return team_score(t, b, problems, task.grader, base.sampling, cfg.score.group_size, cfg.score.seed)

        scores["incumbent"] = score(team, backend)
        if cfg.method == "distill":
            direct_model = load_model(rep_spec)
            perturb_weights(direct_model, cfg.replacement.noise_std, cfg.replacement.noise_seed)
            direct_model.eval()
            dteam = swapped_team(team, j, direct_model, rep_tok)
            scores["direct"] = score(dteam, HFBackend.from_team(dteam, batch_size=base.sampling.batch_size))
            del dteam, direct_model
        aligned_team = None
        if cfg.method in ("distill", "direct"):
            aligned_team = swapped_team(team, j, replacement, rep_tok)
            scores["aligned" if cfg.method == "distill" else "direct"] = score(
                aligned_team, HFBackend.from_team(aligned_team, batch_size=base.sampling.batch_size))
        else:  # mix
            from llm.logits_mixing import MixingBackend

            dteam = swapped_team(team, j, replacement, rep_tok)
            scores["direct"] = score(dteam, HFBackend.from_team(dteam, batch_size=base.sampling.batch_size))
            mix_backend = MixingBackend(backend, j, replacement, incumbent, team[j].eos_token_ids, pad_id, cfg.delta0,
                                        iters=cfg.mix.iters, batch_size=cfg.mix.batch_size)
            scores["aligned"] = score(dteam, mix_backend)
            report["mix_stats"] = mix_backend.stats.summary()
    report["team_score"] = scores

    # --- evaluation harness
    if cfg.evaluate is not None:
        report["eval_incumbent"] = _run_eval(cfg, team, backend, "incumbent", out)
        if cfg.method == "mix":
            report["eval_aligned"] = _run_eval(cfg, swapped_team(team, j, replacement, rep_tok), mix_backend, "aligned", out)
        else:
            sw = swapped_team(team, j, replacement, rep_tok)
            report["eval_aligned"] = _run_eval(cfg, sw, HFBackend.from_team(sw, batch_size=base.sampling.batch_size),
                                               "aligned", out)
    report["seconds_alignment_and_scores"] = time.time() - t0

    # the measurements so far survive a failure of the continuation
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    # --- continued training through llm.train
    if cfg.continue_stages > 0 and aligned_dir is not None:
        team_dirs: dict[int, Path] = {}
        if cfg.incumbent_run is not None:
            for k in report["incumbent_weights"]:
                if k != j:
                    team_dirs[k] = out / "team" / f"agent{k}"
                    model = team[k].model
                    if hasattr(model, "merge_and_unload"):  # LoRA: save the merged full model
                        model = model.merge_and_unload()
                    _save_model(model, team[k].tokenizer, team_dirs[k])
        cont = continuation_config(cfg, aligned_dir, out, team_dirs)
        (out / "continue.yaml").write_text(yaml.safe_dump(cont, sort_keys=False), encoding="utf-8")
        del team, backend, sampler, replacement, incumbent
        from llm.train import train

        result = train(config_from_dict(copy.deepcopy(cont)))
        report["continue"] = {"output_dir": str(result.output_dir), "updates_done": result.updates_done,
                              "stages": [{"stage": r.stage, "batch_mean_returns": r.batch_mean_returns,
                                          "updates": [{"agent": u.agent, "kl": u.kl, "n_rejected": u.n_rejected}
                                                      for u in r.updates]} for r in result.reports]}
    elif cfg.continue_stages > 0:
        report["continue"] = {"skipped": "method 'mix' changes no weights; distill the mixture (method: distill) "
                                         "to continue training"}
    report["seconds_total"] = time.time() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report


def _same_vocab(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


def _save_model(model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    """save_pretrained (safetensors) + tokenizer into ``path``, written to a temp folder then renamed."""
    import os
    import shutil

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _plain_config(cfg: PnPConfig) -> dict[str, Any]:
    d = {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in ("base",)}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.plug_and_play", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="plug-and-play YAML (see configs/plug_and_play_*.yaml)")
    parser.add_argument("--output-dir", default=None, help="override output_dir")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_pnp_config(args.config)
        if args.output_dir is not None:
            cfg = dataclasses.replace(cfg, output_dir=args.output_dir)
        report = run(cfg, progress=not args.no_progress)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
