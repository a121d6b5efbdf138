"""``textbook-gen show``: read a run's documents in the terminal, rendered as Markdown with their
quality fields and provenance, filtered by their coordinates or rejection reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbook_gen.measures import reservoir
from textbook_gen.shards import iter_records

Record = dict[str, Any]


@dataclass(frozen=True)
class Selection:
    ids: tuple[str, ...] = ()
    subject: str | None = None
    topic: str | None = None
    audience: str | None = None
    kind: str | None = None
    rejected: bool = False
    reason: str | None = None  # the start of the rejection reason, or its stage

    def matches(self, r: Record) -> bool:
        if self.ids and str(r.get("id")) not in self.ids:
            return False
        for key in ("subject", "topic", "audience", "kind"):
            want = getattr(self, key)
            if want is not None and str(r.get(key, "")).lower() != want.lower():
                return False
        if self.reason is not None:
            why = r.get("rejected") or {}
            reason, stage = str(why.get("reason", "")), str(why.get("stage", ""))
            if not (reason.startswith(self.reason) or stage == self.reason):
                return False
        return True


def select(run_dir: Path, s: Selection, *, sample: int | None = None,
           seed: int = 0) -> Iterator[Record]:
    """The matching records of a run (or its rejects); ``sample``: that many at random,
    reservoir-sampled so a corpus of any size is read once in bounded memory."""
    source = iter_records(run_dir, "rejects" if s.rejected or s.reason else "shards")
    matching = (r for r in source if s.matches(r))
    yield from matching if sample is None else reservoir(matching, sample, seed)


def render(console: Any, r: Record) -> None:
    from rich.markdown import Markdown
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    class _Grid(Table):  # cells as plain text: a traceback's [brackets] are not markup
        def add_row(self, *cells: Any, **kw: Any) -> None:  # type: ignore[override]
            super().add_row(*(Text(str(c)) for c in cells), **kw)

    meta = _Grid.grid(padding=(0, 2))
    coords = " · ".join(str(r[k]) for k in ("kind", "subject", "topic", "audience", "style")
                        if r.get(k))
    meta.add_row("document", f"{r.get('id', '')}")
    if coords:
        meta.add_row("where", coords)
    q = {k: v for k, v in (r.get("quality") or {}).items() if v is not None}
    if q:
        meta.add_row("quality", ", ".join(f"{k} {v}" for k, v in q.items()))
    p = r.get("provenance") or {}
    if p:
        made = f"{p.get('provider', '')}/{p.get('model', '')}, seed {p.get('seed')}, " \
               f"{p.get('finish_reason', '')}, " + (
                   f"${p['cost_usd']}" if p.get("cost_usd") is not None else "cost unknown")
        meta.add_row("made by", made)
        meta.add_row("template", f"{p.get('template', '')} ({str(p.get('template_sha256', ''))[:12]})")
    why = r.get("rejected")
    if why:
        meta.add_row("rejected", f"{why.get('stage')}: {why.get('reason')}")
        if why.get("detail"):
            meta.add_row("", str(why["detail"])[:600])
    console.print(Panel(meta, border_style="red" if why else "green"))
    console.print(Markdown(str(r.get("text", ""))))
    console.print()
