"""The knowledge base: one TOML file per catalogue slug, matched against error texts.

One module per job:

- :mod:`.schema`: the file format, loading and validation (`load`, `load_file`, `Entry`);
- :mod:`.patterns`: what a pattern requires (a small parser of the pattern's source),
  its score, and matching a message (`Match`);
- :mod:`.scan`: scanning a log file fast (`LogScanner`, `LogReport`, `LogHit`);
- :mod:`.normalise`: reading an unknown libvirt message (`parse_error`);
- :mod:`.base`: `KnowledgeBase`, the entries plus matching and scanning over them.

Ranking: a match scores by the specificity of the pattern that hit, i.e. the number of
literal characters it requires (anchors add a little), mapped to 0..1. Longer, more exact
patterns win; each slug appears once, with its best pattern.
"""
from __future__ import annotations

from virtdoctor.knowledge.base import KnowledgeBase
from virtdoctor.knowledge.normalise import PREFIXES, parse_error
from virtdoctor.knowledge.patterns import Match
from virtdoctor.knowledge.scan import LogHit, LogReport
from virtdoctor.knowledge.schema import AUTOS, SCHEMA, SCOPES, Entry, builtin_dir, load, load_file

__all__ = ["AUTOS", "PREFIXES", "SCHEMA", "SCOPES", "Entry", "KnowledgeBase", "LogHit", "LogReport", "Match",
           "builtin_dir", "load", "load_file", "parse_error"]
