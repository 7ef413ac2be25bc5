"""User-facing errors: collected, then raised once, printed without a traceback.

Anything a user can fix (a recipe key, a data row, a missing file) is a `UserError`; the CLI turns it into
one message and a non-zero exit. Bugs stay ordinary exceptions so their traceback reaches us.

One way to raise: a `UserError` always carries `Problem`s (where, what, the fix), gathered with a
`ProblemCollector` when there may be several. `UserError("text")` is only the shorthand for one problem
with no file or key to name: `Problem("lfw", "text")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where it is (file, key path or row) and how to fix it."""

    where: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


class UserError(Exception):
    """An error the user can fix; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | str, title: str = "") -> None:
        self.problems: list[Problem] = [Problem("lfw", problems)] if isinstance(problems, str) else problems
        self.title = title
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.title] if self.title else []
        if len(self.problems) > 1 and not self.title:
            lines.append(f"{len(self.problems)} problems:")
        lines += [f"  - {p}" if len(self.problems) > 1 or self.title else str(p) for p in self.problems]
        return "\n".join(lines)


@dataclass
class ProblemCollector:
    """Gathers problems while checking, so the user sees all of them in one go."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(where, message, fix))

    def raise_if_any(self, title: str = "") -> None:
        if self.problems:
            raise UserError(self.problems, title)
