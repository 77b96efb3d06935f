"""Text handoff: how one turn's prompt is built from the problem and the earlier messages.

Default format (TeamTR's chain evaluation, ``scripts/run_team_eval.py --mode chain``)::

    {question}

    Previous agents' answers:
    Agent 1:
    {text of the first message}

    Agent 2:
    {text of the second message}

    {final_instruction}

- ``question`` is ``question_template.format(problem=problem.prompt)``.
- The block "Previous agents' answers:" appears only when there are earlier messages; each earlier
  message is labelled with ``label_template.format(index=k + 1, name=agent_name)`` where k is the
  speaking agent's index in the team (so "Agent 2" is always the same model across turns).
- ``final_instruction`` is appended on every turn with earlier messages (``first_turn_instruction``
  on the first turn, empty by default).
- The whole user message is rendered with the *speaking agent's* chat template, with that agent's
  system prompt (role) when it has one. Thinking blocks (``<think>...</think>``) are removed from the
  texts handed on when ``strip_thinking`` is set.

Every field is configurable (``team.protocol:`` in the YAML config, :class:`HandoffFormat`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from llm.config.errors import ConfigError
from llm.config.fields import Section, option

_THINK = re.compile(r"<think>.*?(</think>|$)", flags=re.DOTALL)


@dataclass(frozen=True)
class HandoffFormat(Section):
    """The prompt format of the text handoff (see the module docstring)."""

    question_template: str = option("{problem}", help="the question shown on every turn; must contain {problem}")
    header: str = option("Previous agents' answers:", help="line above the earlier messages")
    label_template: str = option("Agent {index}:", help="label of an earlier message; may use {index} (1-based "
                                 "agent index) and {name} (agent name)")
    final_instruction: str = option(
        "Considering the question and the previous answers, give your best final answer. "
        'The last line of your response should be of the form "Answer: $ANSWER".',
        help="appended on every turn that has earlier messages")
    first_turn_instruction: str = option("", help="appended on a turn without earlier messages")
    separator: str = option("\n\n", help="text between the parts of a user message")
    strip_thinking: bool = option(True, help="remove <think>...</think> blocks from the texts handed on")

    def validate(self) -> None:
        if "{problem}" not in self.question_template:
            raise ConfigError(f"HandoffFormat.question_template must contain '{{problem}}', "
                              f"got {self.question_template!r}", key="question_template")
        try:
            self.label_template.format(index=1, name="a")
        except (KeyError, IndexError):
            raise ConfigError(f"HandoffFormat.label_template may use only {{index}} and {{name}}, "
                              f"got {self.label_template!r}", key="label_template") from None

    def clean(self, text: str) -> str:
        """The text of a message as handed on to later agents."""
        if self.strip_thinking:
            text = _THINK.sub("", text)
        return text.strip()

    def user_message(self, problem: str, previous: Sequence[tuple[int, str, str]]) -> str:
        """The user message of a turn. ``previous``: (agent index, agent name, text) per earlier turn."""
        parts = [self.question_template.format(problem=problem)]
        if previous:
            blocks = [
                f"{self.label_template.format(index=k + 1, name=name)}\n{self.clean(text)}" for k, name, text in previous
            ]
            parts.append(self.header + "\n" + self.separator.join(blocks))
            if self.final_instruction:
                parts.append(self.final_instruction)
        elif self.first_turn_instruction:
            parts.append(self.first_turn_instruction)
        return self.separator.join(parts)


def chat_messages(system_prompt: str | None, user: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user})
    return messages


def render_prompt(tokenizer: Any, system_prompt: str | None, user: str, template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a turn's prompt in ``tokenizer``'s chat template (generation prompt added)."""
    text = tokenizer.apply_chat_template(
        chat_messages(system_prompt, user), tokenize=False, add_generation_prompt=True, **(template_kwargs or {})
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
