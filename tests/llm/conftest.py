"""Fixtures of the LLM tests: tiny language models built locally (no hub downloads) for the LLM-engine tests.

Three model directories, each a normal ``save_pretrained`` folder (config, safetensors weights,
tokenizer with or without a chat template), so the code under test loads them exactly as it
would load a hub checkpoint:

- ``tiny_qwen3``: Qwen3 architecture (hidden 64, 2 layers, 2 heads x head_dim 32, 1 KV head),
  byte-level BPE tokenizer (vocab ~384), ChatML chat template, EOS ``<|im_end|>``.
- ``tiny_llama``: Llama architecture (hidden 96, 2 layers, 3 heads x head_dim 32), a *different*
  byte-level BPE tokenizer (vocab ~320) with a Zephyr-like template, EOS ``</s>`` (heterogeneity).
- ``tiny_no_template``: like ``tiny_qwen3`` but its tokenizer has no chat template (error tests).

Pytest fixtures: ``tiny_model_dirs`` -> dict name -> Path, ``tiny_qwen3_dir``, ``tiny_llama_dir``,
``tiny_no_template_dir`` (session scoped); ``tiny_run_config`` (a function building a run config
dict for the tiny team) and ``parity_grader`` (a grader with reward variance).

Build them outside pytest with :func:`build_tiny_models` (returns the same dict).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm.rewards.base import Grade

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_CORPUS = [
    "Solve the following math problem step by step. The last line of your response should be "
    "of the form Answer: $Answer where $Answer is the answer to the problem.",
    "Previous agents' answers: Agent 1: Agent 2: Agent 3: Give your best final answer.",
    "What is 12 + 7? Compute 3 * 4 - 5. Calculate 9 - 2 + 8 = 15. The answer is 42.",
    "You are a careful solver. You are a critic. You check the work of the other agents.",
    "Knights always tell the truth and knaves always lie. Who is a knight and who is a knave?",
    "There are 3 houses in a row. Each house has a different color. Zebra puzzle clues.",
    "system user assistant 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! : ;",
]


def _train_tokenizer(vocab_size: int, specials: list[str], corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return tok


def _save(
    out: Path, arch: str, vocab_size: int, template: str | None, specials: list[str], eos: str, pad: str, seed: int
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    corpus = _CORPUS if arch == "qwen3" else [s.lower() for s in _CORPUS] + [s.upper() for s in _CORPUS]
    raw = _train_tokenizer(vocab_size, specials, corpus)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=eos, pad_token=pad)
    if template is not None:
        tokenizer.chat_template = template
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        num_hidden_layers=2,
        num_attention_heads=2 if arch == "qwen3" else 3,
        num_key_value_heads=1,
        head_dim=32,
        intermediate_size=128,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(hidden_size=64, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=96, **common))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Build the three tiny model folders under ``root`` (about 1-2 s on a CPU)."""
    root = Path(root)
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    llama_specials = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    return {
        "tiny_qwen3": _save(root / "tiny_qwen3", "qwen3", 384, CHATML_TEMPLATE, qwen_specials, "<|im_end|>",
                            "<|endoftext|>", seed=0),
        "tiny_llama": _save(root / "tiny_llama", "llama", 320, ZEPHYR_TEMPLATE, llama_specials, "</s>", "<pad>",
                            seed=1),
        "tiny_no_template": _save(root / "tiny_no_template", "qwen3", 384, None, qwen_specials, "<|im_end|>",
                                  "<|endoftext|>", seed=2),
    }


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["tiny_qwen3"]


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["tiny_llama"]


@pytest.fixture(scope="session")
def tiny_no_template_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["tiny_no_template"]


def make_tiny_run_config(dirs: dict[str, Path], output_dir: Path | str, **train: object) -> dict:
    """A run config (plain dict, as parsed from YAML) for a 3-agent heterogeneous tiny team:
    two tiny Qwen3 agents and one tiny Llama agent, 6 new tokens per turn, basic arithmetic.
    ``train`` overrides keys of the ``train`` section."""
    agent = dict(max_new_tokens=6, micro_batch_size=4, optimizer={"lr": 1e-2, "weight_decay": 0.0})
    cfg = {
        "team": {
            "agents": [
                {"name": "solver", "model": str(dirs["tiny_qwen3"]), "system_prompt": "You are a solver.", **agent},
                {"name": "critic", "model": str(dirs["tiny_llama"]), "system_prompt": "You are a critic.", **agent},
                {"name": "judge", "model": str(dirs["tiny_qwen3"]), **agent},
            ],
            "router": {"kind": "fixed", "rounds": 1},
        },
        "task": {"kind": "reasoning_gym", "names": ["basic_arithmetic"], "size": 16, "seed": 0,
                 "contamination_policy": "off"},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "batch_size": 8},
        "train": {"stages": 2, "prompts_per_stage": 2, "group_size": 2, "mode": "intermediate", "seed": 0,
                  # the default monitor: the exact full-vocabulary KL of LLMAgent
                  "update": {"epochs": 1, "delta": 0.05, "beta": 0.001, "max_backtracks": 3}},
        "output_dir": str(output_dir),
        "progress": False,
    }
    cfg["train"].update(train)
    return cfg


def grade_parity(response: str, problem) -> Grade:
    """A grader with reward variance for random tiny models: 1 if the response has an even length."""
    return Grade(float(len(response) % 2 == 0), True, response[-8:])


@pytest.fixture(scope="session")
def tiny_run_config():
    """``tiny_run_config(dirs, output_dir, **train)``: see :func:`make_tiny_run_config`."""
    return make_tiny_run_config


@pytest.fixture(scope="session")
def parity_grader():
    """The grader :func:`grade_parity`."""
    return grade_parity


@pytest.fixture
def make_trainer_plain():
    """``make_trainer_plain(cfg, **kw)``: a Trainer of a run config dict (its own grader)."""
    from llm.train import Trainer
    from llm.train.config import config_from_dict

    return lambda cfg, **kw: Trainer(config_from_dict(cfg), **kw)




@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole pytest run (2 CPUs, 200 MB object store, no
    dashboard); skips the test when Ray is not installed (pip install -e ".[distributed]")."""
    ray = pytest.importorskip("ray")
    from llm.distributed.config import RaySection
    from llm.distributed.placement import ensure_ray

    ensure_ray(RaySection(num_cpus=2, object_store_memory_mb=200))
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_qwen3_model():
    """``build(seed=0)``: a tiny in-memory Qwen3 causal LM (vocab 64, 2 layers, tied embeddings, no
    tokenizer) for tests of weight bookkeeping that need real module and parameter names."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    def build(seed: int = 0):
        torch.manual_seed(seed)
        cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
        return Qwen3ForCausalLM(cfg).eval()

    return build
