"""Plug-and-play replacement of an LLM agent (llm.plug_and_play, llm.rollout.mixing) on tiny local
models (fast), and on SmolLM2-135M-Instruct with a perturbed copy (opt-in, ``-m slow``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# The per-prefix mixing is the exact Stage-0 projection


def test_geometric_mix_matches_the_exact_tabular_projection() -> None:
    from llm.rollout.mixing import geometric_mix
    from occupancy.exact import kl_rows
    from occupancy.projection import geometric_projection

    rng = np.random.default_rng(0)
    for scale, delta0 in ((0.5, 0.2), (2.0, 0.01), (3.0, 0.05)):
        pre = torch.tensor(rng.normal(size=(6, 50)) * scale)
        inc = torch.tensor(rng.normal(size=(6, 50)) * scale)
        lp, li = torch.log_softmax(pre, -1), torch.log_softmax(inc, -1)
        res = geometric_mix(lp, li, delta0, iters=60)
        exact = geometric_projection(lp.exp().numpy(), li.exp().numpy(), delta0)
        np.testing.assert_allclose(res.logp.exp().numpy(), exact.policy, atol=1e-8)
        kl = kl_rows(res.logp.exp().numpy(), li.exp().numpy())
        inside = exact.lam == 0
        assert np.all(kl <= delta0 * (1 + 1e-9))
        np.testing.assert_allclose(kl[~inside], delta0, rtol=1e-6)  # equality where active
        assert torch.all(res.t[torch.from_numpy(inside)] == 1.0)  # lambda = 0 inside
        assert np.all(res.lam.numpy()[inside] == 0.0)


def test_geometric_mix_rejects_bad_input() -> None:
    from llm.rollout.mixing import geometric_mix

    with pytest.raises(ValueError, match="delta0"):
        geometric_mix(torch.zeros(2, 3), torch.zeros(2, 3), -1.0)
    with pytest.raises(ValueError, match="B, V"):
        geometric_mix(torch.zeros(2, 3), torch.zeros(2, 4), 0.1)


# ---------------------------------------------------------------------------------------------
# Models


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def _random_messages(m: int, gen: torch.Generator, context: int = 8, tokens: int = 5):
    """A MessageBatch of m agent-0 messages with random context (m, context) and tokens (m, tokens)."""
    from trust_region.batch import MessageBatch

    return MessageBatch(
        trajectory=torch.arange(m), group=torch.arange(m), agent=torch.zeros(m, dtype=torch.long),
        turn=torch.zeros(m, dtype=torch.long), context=torch.randint(10, 300, (m, context), generator=gen),
        context_mask=torch.ones(m, context, dtype=torch.bool),
        tokens=torch.randint(10, 300, (m, tokens), generator=gen), mask=torch.ones(m, tokens, dtype=torch.bool),
        behaviour_logp=torch.zeros(m, tokens), reward=torch.zeros(m), returns=torch.zeros(m),
        generated=torch.ones(m, dtype=torch.bool))


def test_tokenizer_mismatch_is_a_clear_error(tiny_qwen3_dir, tiny_llama_dir) -> None:  # noqa: F811
    from llm.plug_and_play import TokenizerMismatchError, check_shared_tokenizer

    _, qwen = _load(tiny_qwen3_dir)
    _, llama = _load(tiny_llama_dir)
    for method in ("distill", "mix"):
        with pytest.raises(TokenizerMismatchError, match="tokenizer"):
            check_shared_tokenizer(qwen, llama, method)
    check_shared_tokenizer(qwen, llama, "direct")  # a direct swap needs no shared vocabulary
    check_shared_tokenizer(qwen, qwen, "distill")


def test_mixing_backend_keeps_every_token_inside_the_ball(tiny_qwen3_dir) -> None:  # noqa: F811
    from llm.rollout.mixing import MixingBackend
    from llm.plug_and_play import perturb_weights
    from llm.rollout.base import SamplingConfig

    inc, tok = _load(tiny_qwen3_dir)
    pre, _ = _load(tiny_qwen3_dir)
    perturb_weights(pre, 3.0, seed=1)

    class Base:
        def generate(self, agent, prompts, sampling, seed=None):
            raise AssertionError("agent 0 must be served by mixing")

    backend = MixingBackend(Base(), 0, pre, inc, [tok.eos_token_id], tok.pad_token_id, delta0=0.02, iters=40)
    prompts = [tok("What is 12 + 7?")["input_ids"], tok("Compute 3 * 4 - 5.")["input_ids"]]
    gens = backend.generate(0, prompts, SamplingConfig(max_new_tokens=5, temperature=1.0), seed=0)
    assert len(gens) == 2 and all(1 <= len(g.token_ids) <= 5 for g in gens)
    s = backend.stats.summary()
    assert s["positions"] >= 2
    assert s["kl_mix_max"] <= 0.02 * (1 + 1e-6)
    assert s["kl_pre_mean"] > 0.02 and s["active_share"] > 0  # the replacement started outside
    # recorded log-probs are those of the mixture: finite and <= 0
    assert all(np.isfinite(g.logprobs).all() and max(g.logprobs) <= 0 for g in gens)
    # same seed, same samples
    again = MixingBackend(Base(), 0, pre, inc, [tok.eos_token_id], tok.pad_token_id, delta0=0.02, iters=40)
    assert [g.token_ids for g in again.generate(0, prompts, SamplingConfig(max_new_tokens=5, temperature=1.0),
                                                seed=0)] == [g.token_ids for g in gens]


def test_distillation_reaches_the_radius(tiny_qwen3_dir) -> None:  # noqa: F811
    """Forward distillation toward the incumbent lowers the measured KL below delta0 and stops."""
    from llm.plug_and_play import DistillSection, distill, measure_kl, perturb_weights

    inc, tok = _load(tiny_qwen3_dir)
    new, _ = _load(tiny_qwen3_dir)
    perturb_weights(new, 2.0, seed=0)
    batch = _random_messages(6, torch.Generator().manual_seed(0))
    before = measure_kl(inc, new, batch, 1.0, tok.pad_token_id)
    delta0 = before["token_mean"] / 4
    hist = distill(new, inc, batch, batch, DistillSection(max_steps=60, lr=3e-3, batch_size=3), delta0,
                   "token_mean", 1.0, tok.pad_token_id)
    assert hist[0]["token_mean"] == pytest.approx(before["token_mean"])
    assert hist[-1]["token_mean"] <= delta0 < hist[-2]["token_mean"]  # stopped at the first success
    assert hist[-1]["step"] < 60
    assert measure_kl(inc, new, batch, 1.0, tok.pad_token_id)["token_mean"] == pytest.approx(hist[-1]["token_mean"])


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture
def pnp_dict(tiny_run_config):
    """``pnp_dict(dirs, tmp, **over)``: a plug-and-play config (plain data) over the tiny team."""
    return lambda dirs, tmp, **over: _pnp(tiny_run_config, dirs, tmp, **over)


def _pnp(tiny_run_config, dirs, tmp: Path, **over) -> dict:
    base = tiny_run_config(dirs, tmp / "base_run", stages=1)
    base["team"]["agents"][1]["model"] = str(dirs["tiny_qwen3"])  # the replaced agent: a tiny Qwen3
    cfg = {"base": base, "agent": "critic", "replacement": {"model": str(dirs["tiny_qwen3"]), "noise_std": 3.0},
           "method": "distill", "delta0": 0.03, "contexts": {"prompts": 4, "group_size": 2},
           "distill": {"max_steps": 40, "lr": 3e-3, "batch_size": 4}, "score": {"prompts": 4, "group_size": 2},
           "continue_stages": 1, "output_dir": str(tmp / "pnp")}
    cfg.update(over)
    return cfg


def test_config_errors_name_the_field(pnp_dict, tiny_model_dirs, tmp_path) -> None:  # noqa: F811
    from llm.config import ConfigError
    from llm.plug_and_play import pnp_config_from_dict

    with pytest.raises(ConfigError, match="method"):
        pnp_config_from_dict(pnp_dict(tiny_model_dirs, tmp_path, method="blend"))
    with pytest.raises(ConfigError, match="agent"):
        pnp_config_from_dict(pnp_dict(tiny_model_dirs, tmp_path, agent="nobody"))
    with pytest.raises(ConfigError, match="unknown key"):
        pnp_config_from_dict(pnp_dict(tiny_model_dirs, tmp_path, colour="red"))
    with pytest.raises(ConfigError, match="distill"):
        pnp_config_from_dict(pnp_dict(tiny_model_dirs, tmp_path, distill={"lr": -1.0}))


def test_mismatched_tokenizer_fails_before_loading_weights(pnp_dict, tiny_model_dirs, tmp_path) -> None:  # noqa: F811
    from llm.plug_and_play import TokenizerMismatchError, main

    cfg = pnp_dict(tiny_model_dirs, tmp_path, replacement={"model": str(tiny_model_dirs["tiny_llama"])})
    path = tmp_path / "pnp.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--no-progress"]) == 2
    from llm.plug_and_play import load_pnp_config, run

    with pytest.raises(TokenizerMismatchError):
        run(load_pnp_config(path), progress=False)
    assert not (tmp_path / "pnp" / "report.json").exists()


def test_distill_swap_evaluate_and_continue(pnp_dict, tiny_model_dirs, tmp_path) -> None:  # noqa: F811
    from llm.plug_and_play import load_pnp_config, run

    import yaml

    path = tmp_path / "pnp.yaml"
    path.write_text(yaml.safe_dump(pnp_dict(tiny_model_dirs, tmp_path)))
    report = run(load_pnp_config(path), progress=False)
    assert report["kl_before"]["token_mean"] > 0.03  # the replacement starts outside
    assert report["kl_after"]["token_mean"] < report["kl_before"]["token_mean"]
    assert report["distill_steps"] >= 1
    assert report["aligned"] == (report["kl_after"]["token_mean"] <= 0.03)
    assert set(report["team_score"]) == {"incumbent", "direct", "aligned"}
    for s in report["team_score"].values():
        assert 0.0 <= s["score"] <= 1.0 and s["trajectories"] == 8
    out = tmp_path / "pnp"
    assert (out / "aligned_agent" / "model.safetensors").is_file()
    assert (out / "aligned_agent" / "tokenizer.json").is_file()
    # the continued run trained the team with the aligned agent and can be resumed by llm.train
    cont = yaml.safe_load((out / "continue.yaml").read_text())
    assert cont["team"]["agents"][1]["model"] == str(out / "aligned_agent")
    assert (out / "continue" / "cursor.json").is_file()
    assert report["continue"]["updates_done"] == 3
    saved = json.loads((out / "report.json").read_text())
    assert saved["kl_after"] == report["kl_after"]
    # a second swap in the continued run: its checkpointed weights are the incumbents
    from safetensors.torch import load_file

    run_dir = out / "continue"
    cfg2 = pnp_dict(tiny_model_dirs, tmp_path, method="direct", incumbent_run=str(run_dir), continue_stages=1,
                score={"prompts": 2, "group_size": 1}, output_dir=str(tmp_path / "pnp2"))
    cfg2["base"] = cont
    report2 = run(load_pnp_config(_write(tmp_path / "pnp2.yaml", cfg2)), progress=False)
    assert set(report2["incumbent_weights"]) == {0, 1, 2}
    cont2 = yaml.safe_load((tmp_path / "pnp2" / "continue.yaml").read_text())
    agent0 = Path(cont2["team"]["agents"][0]["model"])
    assert agent0 == tmp_path / "pnp2" / "team" / "agent0"
    ckpt = load_file(str(run_dir / json.loads((run_dir / "cursor.json").read_text())["agents"]["0"]["weights"]))
    saved0 = load_file(str(agent0 / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(saved0[name], ckpt[name])
    assert "kl_before" in report2 and "distill_steps" not in report2


def _write(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def test_mix_method_scores_the_mixed_team(pnp_dict, tiny_model_dirs, tmp_path) -> None:  # noqa: F811
    from llm.plug_and_play import pnp_config_from_dict, run

    report = run(pnp_config_from_dict(pnp_dict(tiny_model_dirs, tmp_path, method="mix", delta0=0.01)), progress=False)
    assert report["mix_stats"]["kl_mix_max"] <= 0.01 * (1 + 1e-6)
    assert report["mix_stats"]["active_share"] > 0
    assert set(report["team_score"]) == {"incumbent", "direct", "aligned"}
    assert "skipped" in report["continue"]
    assert not (tmp_path / "pnp" / "aligned_agent").exists()


# ---------------------------------------------------------------------------------------------
# Opt-in: SmolLM2-135M-Instruct and a perturbed copy


@pytest.mark.slow
def test_smollm2_perturbed_copy_is_aligned(tmp_path) -> None:
    from llm.models import ensure_smollm2
    from llm.plug_and_play import pnp_config_from_dict, run, summary_lines

    try:
        smol = ensure_smollm2()
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(str(err))
    agent = dict(model=str(smol), max_new_tokens=32, micro_batch_size=4, optimizer={"lr": 1e-5, "weight_decay": 0.0})
    base = {
        "team": {"agents": [dict(name="solver", system_prompt="Solve the problem. End with 'Answer: N'.", **agent),
                            dict(name="finalizer", system_prompt="Give the final answer as 'Answer: N'.", **agent)]},
        "task": {"kind": "reasoning_gym", "names": ["basic_arithmetic"], "size": 24, "contamination_policy": "off",
                 "dataset_kwargs": {"basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                         "max_digits": 1}}},
        "sampling": {"temperature": 0.8, "batch_size": 16},
        "train": {"stages": 1, "prompts_per_stage": 2, "group_size": 2, "update": {"epochs": 1, "delta": 0.01}},
        "progress": False,
    }
    cfg = pnp_config_from_dict({
        "base": base, "agent": "finalizer", "replacement": {"model": str(smol), "noise_std": 0.05, "noise_seed": 0},
        "method": "distill", "delta0": 0.05, "contexts": {"prompts": 6, "group_size": 2},
        "distill": {"max_steps": 30, "lr": 5e-5, "batch_size": 4}, "score": {"prompts": 12, "group_size": 2},
        "continue_stages": 1, "output_dir": str(tmp_path / "pnp")})
    report = run(cfg, progress=False)
    print("\n" + "\n".join(summary_lines(report)))
    assert report["kl_before"]["token_mean"] > report["kl_after"]["token_mean"]
    assert (tmp_path / "pnp" / "aligned_agent" / "model.safetensors").is_file()


def test_distillation_keeps_the_best_monitored_weights(tiny_qwen3_dir) -> None:
    """Early stopping: trained on messages unlike the monitored ones with a large step, the
    monitored KL rises; distill hands back the weights of its lowest measurement."""
    from llm.plug_and_play import DistillSection, best_row, distill, measure_kl, perturb_weights

    inc, tok = _load(tiny_qwen3_dir)
    new, _ = _load(tiny_qwen3_dir)
    perturb_weights(new, 0.5, seed=1)
    g = torch.Generator().manual_seed(1)
    train, monitor = _random_messages(2, g), _random_messages(6, g)
    hist = distill(new, inc, train, monitor, DistillSection(max_steps=12, lr=0.3, batch_size=2), 1e-9,
                   "token_mean", 1.0, tok.pad_token_id)
    best = best_row(hist, "token_mean")
    assert hist[-1]["token_mean"] > best["token_mean"]  # the lr overshoots: the last step is not the best
    assert measure_kl(inc, new, monitor, 1.0, tok.pad_token_id)["token_mean"] == pytest.approx(best["token_mean"])
