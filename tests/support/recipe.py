"""The hand-verification recipe of ``docs/verification.md``, taken from the document as written.

:func:`recipe_blocks` returns the ```` ```sh ```` blocks of the section *Verifying by hand,
with standard tools* (or of another section, e.g. *Verifying a batch with cosign*), in order
and dedented (the blocks sit inside a numbered list);
:func:`run_recipe` runs them as one ``bash`` script with ``set -euo pipefail`` in a
directory, with only the environment it is given, and reports which block failed first.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DOC", "SECTION", "RecipeRun", "heredoc", "recipe_blocks", "run_recipe"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "verification.md"
SECTION = "## Verifying by hand, with standard tools"

_FENCE = re.compile(r"^(?P<indent> *)```sh\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)
_MARK = "@@recipe-block "


def recipe_blocks(text: str | None = None, section: str = SECTION) -> list[str]:
    """The shell blocks of ``section`` (default: the hand-verification recipe); every fenced
    block of the section must be one (a block marked otherwise would silently not run)."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    start = text.index(f"\n{section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    blocks = [textwrap.dedent(m["body"]) for m in _FENCE.finditer(body)]
    fences = sum(1 for line in body.splitlines() if line.lstrip().startswith("```"))
    if fences != 2 * len(blocks):
        raise AssertionError(f"{section!r}: {fences} fence lines for {len(blocks)} sh blocks: "
                             "every block of the recipe must be a ```sh block")
    return blocks


def heredoc(block: str, name: str) -> str:
    """The text a block writes with ``cat > NAME <<'EOF'`` … ``EOF``."""
    match = re.search(rf"^cat > {re.escape(name)} <<'EOF'\n(.*?)^EOF$", block, re.M | re.S)
    if match is None:
        raise AssertionError(f"no heredoc for {name} in the block")
    return match[1]


@dataclass(frozen=True)
class RecipeRun:
    returncode: int
    stdout: str
    stderr: str
    blocks: tuple[str, ...]

    @property
    def failed_block(self) -> str | None:
        """The block that stopped the script (None when every block ran to its end)."""
        marks = [line[len(_MARK):] for line in self.stderr.splitlines() if line.startswith(_MARK)]
        if not marks or marks[-1] == "done":
            return None
        return self.blocks[int(marks[-1])]

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_recipe(workdir: Path, env: Mapping[str, str], blocks: Sequence[str] | None = None,
               *, timeout: float = 300) -> RecipeRun:
    """Run ``blocks`` (default: the document's) in order with ``bash``, ``set -euo
    pipefail``, in ``workdir``, with exactly ``env``."""
    blocks = tuple(recipe_blocks() if blocks is None else blocks)
    lines = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        lines += [f"echo '{_MARK}{i}' >&2", block]
    lines.append(f"echo '{_MARK}done' >&2")
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir.parent / f"{workdir.name}.sh"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(
        ["bash", str(script)], cwd=workdir, env=dict(env), capture_output=True, text=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )
    return RecipeRun(result.returncode, result.stdout, result.stderr, blocks)
