"""The plug-and-play config (``python -m llm.plug_and_play --config configs/plug_and_play_*.yaml``).

Top level (:class:`PnPConfig`): the base run (``base_config:`` an ``llm.train`` config file, or an
inline ``base:`` mapping), the agent to replace and its replacement, the alignment method and its
sections (``contexts``, ``distill``, ``mix``, ``score``), an optional ``evaluate:`` eval section,
``continue_stages`` and ``output_dir``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llm.config.build import build
from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.config.yamlio import load_config_file, load_yaml
from llm.evaluate.config import EvalSection
from llm.train.config import RunConfig, config_from_dict

METHODS = ("distill", "mix", "direct")
KL_REDUCTIONS = ("token_mean", "message_sum")


@dataclass(frozen=True)
class ReplacementSection(Section):
    """The new model."""

    model: str = option(help="hub id, local path or builtin:smollm2")
    tokenizer: str | None = option(None, help="its tokenizer (null: the model's)")
    noise_std: float = option(0.0, ge=0, help="relative Gaussian weight noise (demonstrations and tests)")
    noise_seed: int = option(0, help="seed of the weight noise")

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("replacement.model must be a hub id or a local path", key="model")
        if not math.isfinite(self.noise_std):
            raise ConfigError(f"replacement.noise_std must be finite, got {self.noise_std}", key="noise_std")


@dataclass(frozen=True)
class ContextsSection(Section):
    """Team contexts for the alignment: incumbent-team rollouts."""

    prompts: int = option(8, ge=2, help="task problems rolled out by the incumbent team")
    group_size: int = option(2, ge=1, help="rollouts per problem")
    monitor_fraction: float = option(0.5, gt=0, lt=1, help="share of the problems held out for the KL measurement")
    seed: int = option(0, help="sampler seed of the context rollouts")


@dataclass(frozen=True)
class DistillSection(Section):
    """Distillation (method: distill)."""

    max_steps: int = option(100, ge=0, help="at most this many AdamW steps")
    lr: float = option(1e-4, gt=0, help="learning rate")
    batch_size: int = option(4, ge=1, help="messages per step")
    eval_every: int = option(1, ge=1, help="measure the monitored KL every this many steps")
    weight_decay: float = option(0.0, ge=0, help="AdamW weight decay")
    max_grad_norm: float | None = option(1.0, gt=0, help="gradient-norm clip (null: none)")


@dataclass(frozen=True)
class MixSection(Section):
    """Decoding-time mixing (method: mix)."""

    iters: int = option(40, ge=1, help="bisection steps per token")
    batch_size: int = option(16, ge=1, help="prompts per generate call")


@dataclass(frozen=True)
class ScoreSection(Section):
    """Team score on held-out task problems."""

    prompts: int = option(8, ge=0, help="held-out task problems (the last ones of the task; 0 disables)")
    group_size: int = option(1, ge=1, help="rollouts per problem")
    seed: int = option(12345, help="sampler seed (the same for every team compared)")


@dataclass(frozen=True)
class PnPConfig(Section):
    """A plug-and-play run (see :mod:`llm.plug_and_play.pipeline`). ``base_data`` is the base run
    config as plain data (used to write the continuation config)."""

    base: RunConfig = option(help="the incumbent team's llm.train run config (inline; or base_config: FILE)")
    agent: str | int = option(help="the agent to replace: its name or index")
    replacement: ReplacementSection = option(help="the new model")
    method: str = option("distill", choices=METHODS, help="distill (forward distillation into the trust region), "
                         "mix (decoding-time geometric mixing) or direct (no alignment)")
    delta0: float = option(0.01, gt=0, help="the alignment radius on the token KL")
    kl_reduction: str = option("token_mean", choices=KL_REDUCTIONS, help="which measured KL is compared with delta0")
    contexts: ContextsSection = option(default_factory=ContextsSection, help="team contexts of the alignment")
    distill: DistillSection = option(default_factory=DistillSection, help="distillation settings")
    mix: MixSection = option(default_factory=MixSection, help="mixing settings")
    score: ScoreSection = option(default_factory=ScoreSection, help="team score settings")
    evaluate: EvalSection | None = option(None, help="an eval section (llm.evaluate) run on the incumbent and "
                                          "the aligned teams; null: none")
    continue_stages: int = option(1, ge=0, help="stages of llm.train after the swap (distill, direct)")
    incumbent_run: str | None = option(None, help="an llm.train run directory whose latest weights the incumbents "
                                       "start from")
    output_dir: str = option("runs/plug_and_play", help="where report.json and the saved agent go")
    base_data: dict[str, Any] = option(default_factory=dict, help="(set by the loader) the base config as data")

    def validate(self) -> None:
        if not math.isfinite(self.delta0):
            raise ConfigError(f"delta0 must be finite and > 0, got {self.delta0}", key="delta0")
        names = self.base.team.names
        if isinstance(self.agent, int):
            if not 0 <= self.agent < len(names):
                raise ConfigError(f"agent must be an index in [0, {len(names)}) or a name in {names}, "
                                  f"got {self.agent}", key="agent")
        elif self.agent not in names:
            raise ConfigError(f"agent must be an index or one of the team's names {names}, got {self.agent!r}",
                              key="agent")

    @property
    def agent_index(self) -> int:
        return self.agent if isinstance(self.agent, int) else self.base.team.names.index(self.agent)


def pnp_config_from_dict(data: Any, root: Path | None = None) -> PnPConfig:
    """Validated :class:`PnPConfig` from plain data; a ``base_config`` path is relative to ``root``
    (the YAML file's folder) when not found as given."""
    if not isinstance(data, dict):
        raise ConfigError("the plug-and-play config must be a mapping at the top level")
    data = dict(data)
    if ("base" in data) == ("base_config" in data):
        raise ConfigError("give exactly one of base_config (a run config file) and base (an inline run config)")
    if "base_data" in data:
        raise ConfigError("base_data is set by the loader; use base or base_config", key="base_data")
    if "base_config" in data:
        path = Path(str(data.pop("base_config"))).expanduser()
        if not path.is_file() and root is not None and (root / path).is_file():
            path = root / path
        base_data, _ = load_yaml(path)
    else:
        base_data = data.pop("base")
    if not isinstance(base_data, dict):
        raise ConfigError("base must be a run config mapping (team, task, sampling, train)", key="base")
    if "replacement" not in data:
        raise ConfigError("replacement is required (replacement.model: the new model)", key="replacement")
    try:
        base = config_from_dict(copy.deepcopy(base_data))
    except ConfigError as err:
        raise ConfigError(f"base: {err.message}", key=f"base.{err.key}" if err.key else "base") from None
    return build(PnPConfig, {**data, "base": base, "base_data": copy.deepcopy(base_data)}, "")


def load_pnp_config(path: str | Path, overrides: Sequence[str] = ()) -> PnPConfig:
    """Read a YAML file (plus ``--set`` overrides) into a validated :class:`PnPConfig`."""
    return load_config_file(path, pnp_config_from_dict, overrides, root=Path(path).parent)
