"""The knowledge base: entries by slug, message matching and log scanning over them."""
from __future__ import annotations

from typing import Iterable

from virtdoctor.knowledge.patterns import Match, Pattern, analyse, match_with
from virtdoctor.knowledge.scan import LogReport, LogScanner
from virtdoctor.knowledge.schema import Entry
from virtdoctor.knowledge.unwrap import variants


class KnowledgeBase:
    def __init__(self, entries: dict[str, Entry]):
        self.entries: dict[str, Entry] = dict(sorted(entries.items()))
        self._compiled: list[Pattern] | None = None
        self._scanner: LogScanner | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, slug: object) -> bool:
        return slug in self.entries

    def get(self, slug: str) -> Entry | None:
        return self.entries.get(slug)

    # -- matching a message
    @property
    def patterns(self) -> list[Pattern]:
        if self._compiled is None:
            self._compiled = [analyse(e.slug, p) for e in self.entries.values() for p in e.patterns]
        return self._compiled

    def _match_with(self, text: str, patterns: Iterable[Pattern]) -> dict[str, tuple[float, str]]:
        return match_with(text, patterns)

    def match(self, text: str, *, unwrap: bool = True) -> list[Match]:
        """Catalogue entries whose patterns occur in `text`, best first, each slug once.
        With `unwrap` (the default) the message is also looked for inside what other tools
        print around it (JSON, Python/Go reprs, log headers, hard-wrapped lines ...: see
        :mod:`virtdoctor.knowledge.unwrap`); a slug keeps its best match over all readings."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        found: dict[str, tuple[float, str]] = {}
        for reading in (variants(text) if unwrap else [text]):
            for slug, (score, line) in match_with(reading, self.patterns).items():
                if slug not in found or score > found[slug][0]:
                    found[slug] = (score, line)
        out = []
        for slug, (score, line) in found.items():
            e = self.entries[slug]
            out.append(Match(slug, score, e.title, e.cause, e.fix, e.commands, e.auto, line))
        out.sort(key=lambda m: (-m.score, m.id))
        return out

    # -- scanning a log
    @property
    def scanner(self) -> LogScanner:
        if self._scanner is None:
            self._scanner = LogScanner(self.patterns)
        return self._scanner

    def scan_log(self, source, progress=None) -> LogReport:
        """Count each slug's lines in a log (see :meth:`LogScanner.scan`); `progress(n)` is
        called with the bytes of each block (or worker share) scanned."""
        return self.scanner.scan(source, progress)
