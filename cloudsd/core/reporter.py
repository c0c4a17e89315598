"""How core code tells the user what it is doing: the `Reporter` protocol. The CLI draws it
(`cli/progress.LiveReporter`), tests record it (`core/machines.QuietReporter`). Apart from `core/machines.py`,
which `cloudsd status` imports, because a Protocol needs `typing` at run time.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cloudsd.sync.progress import Progress


class Reporter(Protocol):
    """How core code tells the user what it is doing; the CLI draws it, tests record it."""

    def phase(self, name: str, detail: str = "") -> None: ...

    def note(self, message: str) -> None: ...

    def transfer(self) -> AbstractContextManager[Progress]:
        """Progress for a transfer (the models `up --models` pushes); phases pause while it is drawn."""
        ...
