"""Progress display for long steps (rich), silent when disabled or not on a terminal."""

from __future__ import annotations

from typing import Iterable, Sized, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def progress_bar(items: Iterable[T], description: str, *, enabled: bool = True) -> Iterable[T]:
    """Yield `items`, drawing a rich progress bar on stderr while `enabled`."""
    if not enabled:
        yield from items
        return
    total = len(items) if isinstance(items, Sized) else None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
