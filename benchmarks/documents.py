"""Writing a benchmark's report into the documents that show it: a ``## `` section of
``benchmarks/RESULTS.md`` and a marked block of the README. Shared by every benchmark."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks")


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Create ``path`` with ``write`` (called on a temporary file of the same suffix) and a
    rename, so two benchmark processes sharing a folder never see a half-written file."""
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    write(partial)
    os.replace(partial, path)


def write_atomically(path: Path, text: str) -> None:
    replace_atomically(path, lambda partial: partial.write_text(text))


def replace_section(document: str, heading: str, section: str) -> str:
    """``document`` with the section under ``heading`` (the whole heading line, to the next
    ``## `` heading) replaced by ``section``, or ``section`` appended when there is none."""
    lines = document.splitlines(keepends=True)
    starts = [index for index, line in enumerate(lines) if line.rstrip("\n") == heading]
    if not starts:
        prefix = document.rstrip("\n")
        return (prefix + "\n\n" if prefix else "") + section.rstrip("\n") + "\n"
    start = starts[0]
    end = next(
        (index for index in range(start + 1, len(lines)) if lines[index].startswith("## ")),
        len(lines),
    )
    replacement = section.rstrip("\n") + "\n" + ("\n" if end < len(lines) else "")
    return "".join(lines[:start]) + replacement + "".join(lines[end:])


def write_section(results_md: Path, heading: str, section: str) -> None:
    """Put ``section`` (starting with its ``heading`` line) in place of that section of the
    file (:func:`replace_section`)."""
    existing = results_md.read_text() if results_md.exists() else "# Benchmark results\n\n"
    write_atomically(results_md, replace_section(existing, heading, section))


def replace_marked_block(readme: Path, start_marker: str, end_marker: str, body: str) -> None:
    """Replace what lies between the README's two markers (kept) with ``body``; a README
    without them is left as it is, with a warning."""
    text = readme.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start == -1 or end < start:
        logger.warning("%s has no %s ... %s markers: not updated", readme, start_marker, end_marker)
        return
    write_atomically(readme, text[:start] + start_marker + "\n\n" + body + "\n\n" + text[end:])
