"""Prompt sets of the audit: files of chat prompts, and the shipped pair for the embedded arithmetic task.

A `.jsonl` file holds one prompt per line: a list of chat messages, or an object with `prompt` (messages or a string)
or `messages`, and optionally `answer` (then the ablation check scores completions against it). Any other file is
plain text: every non-empty line is one user message. `embedded:<name>` names a shipped set (see SHIPPED).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from align.config import ConfigError

SHIPPED_DIR = Path(__file__).parent / "prompts"
SHIPPED = {
    # Word problems of the embedded chat arithmetic task (align.data.synthetic.chat_row), with answers.
    "embedded:arithmetic": "arithmetic.jsonl",
    # 32 more of them, disjoint from the first set: the ablation check's held-out prompts.
    "embedded:arithmetic-heldout": "arithmetic-heldout.jsonl",
    # Neutral chat requests (descriptions, poems, tips) with no arithmetic: the control set.
    "embedded:neutral": "neutral.jsonl",
    # 64 yes/no questions and the matching statements, line by line ("Is the ocean quiet?" / "The ocean is quiet."):
    # the unrelated in-model contrast of the rank baseline (--contrast).
    "embedded:questions": "questions.jsonl",
    "embedded:statements": "statements.jsonl",
}


class AuditInputError(ValueError):
    """Bad input to the audit; the message names the file or option and the fix."""


@dataclass(frozen=True)
class PromptSet:
    source: str
    prompts: list[list[dict]]
    answers: list[str | None]
    sha256: str

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self, start: int = 0, stop: int | None = None) -> "PromptSet":
        """Prompts [start, stop) (to the end if stop is None)."""
        return PromptSet(self.source, self.prompts[start:stop], self.answers[start:stop], self.sha256)

    def head(self, n: int | None) -> "PromptSet":
        """The first `n` prompts (all if n is None)."""
        return self.rows(0, n)


def _messages(value, where: str) -> list[dict]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if (isinstance(value, list) and value
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value)):
        return value
    raise AuditInputError(f"{where}: not a prompt (give a list of {{role, content}} messages, or an object with "
                          f"'prompt' or 'messages')")


def _parse_jsonl(lines: list[tuple[int, str]], path: str) -> tuple[list[list[dict]], list[str | None]]:
    prompts, answers = [], []
    for number, line in lines:
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise AuditInputError(f"{where} is not JSON ({err.msg})") from None
        if isinstance(row, dict):
            answer = row.get("answer")
            row = row.get("prompt", row.get("messages"))
            answers.append(None if answer is None else str(answer))
        else:
            answers.append(None)
        prompts.append(_messages(row, where))
    return prompts, answers


def load_prompts(source: str) -> PromptSet:
    """The prompts of a file or shipped set, in file order.

    Raises:
        AuditInputError: the file is missing, unreadable as described above, or holds no prompt.
    """
    path = SHIPPED_DIR / SHIPPED[source] if source in SHIPPED else Path(source).expanduser()
    if source.startswith("embedded:") and source not in SHIPPED:
        raise AuditInputError(f"unknown prompt set '{source}'; shipped sets: {', '.join(SHIPPED)}")
    if not path.is_file():
        raise AuditInputError(f"prompt file {source} does not exist; give a .jsonl of chat prompts, a text file "
                              f"with one prompt per line, or one of {', '.join(SHIPPED)}")
    text = path.read_text(encoding="utf-8")
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if path.suffix == ".jsonl":
        prompts, answers = _parse_jsonl(lines, source)
    else:
        prompts, answers = [[{"role": "user", "content": line.strip()}] for _, line in lines], [None] * len(lines)
    if not prompts:
        raise AuditInputError(f"prompt file {source} holds no prompts")
    return PromptSet(source, prompts, answers, hashlib.sha256(text.encode()).hexdigest())


def check_eval_prompt_sets(eval_config) -> None:
    """With eval.audit on, both prompt sets must be readable: ConfigError naming the key otherwise, before a run
    loads anything."""
    for key in ("audit_target", "audit_control") if eval_config.audit else ():
        try:
            load_prompts(getattr(eval_config, key))
        except AuditInputError as err:
            raise ConfigError(f"eval.{key}: {err}.") from None
