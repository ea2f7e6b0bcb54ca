"""Writing a report into the documents that show it: a ``## `` section of
``benchmarks/RESULTS.md`` and a marked block of the README."""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.cifar100.records import write_atomically

logger = logging.getLogger("benchmarks.cifar100")


def replace_section(results_md: Path, title: str, section: str) -> None:
    """Put ``section`` (starting with the ``title`` line) in place of the section of that
    title, up to the next ``## `` heading; appended when there is none."""
    existing = results_md.read_text() if results_md.exists() else "# Benchmark results\n\n"
    start = existing.find(title)
    if start == -1:
        updated = existing.rstrip("\n") + "\n\n" + section
    else:
        end = existing.find("\n## ", start + len(title))
        updated = existing[:start] + section + ("\n" + existing[end + 1 :] if end != -1 else "")
    write_atomically(results_md, updated)


def replace_marked_block(readme: Path, start_marker: str, end_marker: str, body: str) -> None:
    """Replace what lies between the README's two markers (kept) with ``body``; a README
    without them is left as it is, with a warning."""
    text = readme.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start == -1 or end < start:
        logger.warning("%s has no %s ... %s markers: not updated", readme, start_marker, end_marker)
        return
    write_atomically(readme, text[:start] + start_marker + "\n\n" + body + "\n\n" + text[end:])
