"""The pattern reader of virtdoctor.knowledge.patterns: required literals and scores from a
pattern's source, with the public `re` API only."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from virtdoctor.knowledge import builtin_dir, load
from virtdoctor.knowledge.patterns import analyse, parse, required_runs, specificity

PKG = Path(__file__).resolve().parents[2] / "virtdoctor"


@pytest.mark.parametrize("pattern, spec, runs", [
    (r"abc", 3, [["abc"]]),
    (r"a(?:bc)d", 4, [["abcd"]]),  # a non-capturing group is inlined
    (r"(?:foo bar|foo baz)x", 7, [["foo ba", "x"]]),  # common prefix factored, r|z is a class
    (r"(a|b)c", 1, [["c"]]),
    (r"x(?i:abc)y", 5, [["x", "y"]]),  # scoped flags: its literals are not required as written
    (r"ab{2,3}", 3, [["a", "b"]]),
    (r"a{,3}b{3}c{2,}", 5, [["b", "c"]]),
    (r"x{abc}", 6, [["x{abc}"]]),  # not a quantifier: literal braces
    (r"^internal error: (?:process|qemu) exited", 31,  # the anchor counts 4
     [["internal error: ", "process", " exited"], ["internal error: ", "qemu", " exited"]]),
    (r"[.] [^a] [\]a] \x41\u0042 \(", 8, [[". ", " ", " AB ("]]),
    (r"(?!no)yes(?<=s)\bend\Z", 14, [["yes", "end"]]),
    (r"Cannot (open|read) file", 16, [["Cannot ", "open", " file"], ["Cannot ", "read", " file"]]),
    (r"(?:unable to|cannot) (find|open) it", 14,
     [[a, " ", b, " it"] for a in ("unable to", "cannot") for b in ("find", "open")]),
    (r"(?P<n>a+)(?P=n)", 1, [["a"]]),
    (r"a(?#comment)b", 2, [["ab"]]),
])
def test_required_literals_and_specificity(pattern, spec, runs):
    seq = parse(pattern)
    assert specificity(seq) == spec
    assert required_runs(seq) == runs


def test_unreadable_pattern_scores_zero_and_has_no_keys():
    p = analyse("x-y", r"(a)?(?(1)bcdef|ghijk)")  # a conditional group: valid re, not read
    assert (p.score, p.keys) == (0.0, [])
    assert p.regex.search("ghijk")


def test_every_key_is_required_by_every_match():
    """Every built-in pattern is read (score > 0), and each of its matches on the reference
    texts contains one of its scan keys (a log scan finds a line only through a key)."""
    from tests.unit.test_knowledge import EXPECTED, concrete

    kb = load([builtin_dir()])
    texts = [concrete(t) for t in EXPECTED]
    checked = 0
    for p in kb.patterns:
        assert p.score > 0, p.text
        for text in texts:
            for m in p.regex.finditer(text):
                if p.keys:
                    assert any(k in m.group(0) for k in p.keys), (p.text, text, p.keys)
                    checked += 1
    assert checked > 50


def test_no_private_re_module_is_used():
    for path in (PKG / "knowledge").glob("*.py"):
        src = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(re\._parser|re\._constants|sre_parse|sre_constants)\b"
                             r"|^\s*from\s+re\s+import\s+_", src, re.M), path
