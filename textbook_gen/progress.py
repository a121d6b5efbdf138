"""What long work reports as it goes: the contract between the run and the terminal display.

``Progress`` is silent (tests, ``--quiet``, pipes); ``ui.RichProgress`` draws it with rich.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textbook_gen.generator import GenerationStats


class Progress:
    def generation(self, stats: GenerationStats,
                   label: str = "generate") -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def stage(self, name: str, done: int, total: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        """End any display still drawn."""
