"""Loading and schema validation of knowledge files.

A knowledge file (``knowledge/<slug>.toml``, read with :mod:`tomllib`) has exactly these
keys; :func:`load` checks them and names the file and the problem when one is wrong::

    slug       str        equal to the file's stem, lower-case words joined by "-"
    title      str        one line
    scope      [str]      non-empty, from host | domain | uri | message | build
    checks     [str]      slugs of the checks that confirm it; [] when scope is only message/build
    patterns   [str]      Python regexes searched in a message (re.search, case-sensitive);
                          a message/build-only entry needs at least one
    cause      str        plain words
    fix        str        plain words
    commands   [str]      exact commands (shown even when the fix is manual)
    auto       str        safe | unsafe | manual
    exceptions str        when the entry is wrong ("" allowed)
    references [str]      http(s) links (the seed's links for this entry)
"""
from __future__ import annotations

import pathlib
import re
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from virtdoctor.model import ToolError

if TYPE_CHECKING:
    from virtdoctor.knowledge.base import KnowledgeBase

SCOPES = ("host", "domain", "uri", "message", "build")
AUTOS = ("safe", "unsafe", "manual")
_SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")

# key -> (type, element type or None); every key is required, no others are allowed
SCHEMA: dict[str, tuple[type, type | None]] = {
    "slug": (str, None),
    "title": (str, None),
    "scope": (list, str),
    "checks": (list, str),
    "patterns": (list, str),
    "cause": (str, None),
    "fix": (str, None),
    "commands": (list, str),
    "auto": (str, None),
    "exceptions": (str, None),
    "references": (list, str),
}


@dataclass(frozen=True)
class Entry:
    slug: str
    title: str
    scope: tuple[str, ...]
    checks: tuple[str, ...]
    patterns: tuple[str, ...]
    cause: str
    fix: str
    commands: tuple[str, ...]
    auto: str
    exceptions: str
    references: tuple[str, ...]
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug, "title": self.title, "scope": list(self.scope),
            "checks": list(self.checks), "patterns": list(self.patterns), "cause": self.cause,
            "fix": self.fix, "commands": list(self.commands), "auto": self.auto,
            "exceptions": self.exceptions, "references": list(self.references),
        }


# --------------------------------------------------------------------------- loading

def builtin_dir():
    """The knowledge files shipped with virtdoctor (package ``virtdoctor.knowledge_data``).

    In a source checkout that is not installed, the package does not exist under that
    name; the repository's ``knowledge/`` folder is used instead."""
    from importlib import resources

    try:
        return resources.files("virtdoctor.knowledge_data")
    except ModuleNotFoundError:
        return pathlib.Path(__file__).resolve().parents[2] / "knowledge"


def _problem(name: str, message: str) -> ToolError:
    return ToolError(f"knowledge file {name}: {message}")


def _validate(name: str, stem: str, data: dict[str, Any]) -> Entry:
    missing = [k for k in SCHEMA if k not in data]
    if missing:
        raise _problem(name, f"missing key(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise _problem(name, f"unknown key(s) {', '.join(unknown)}")
    for key, (typ, elem) in SCHEMA.items():
        value = data[key]
        if not isinstance(value, typ):
            raise _problem(name, f"{key} must be a {typ.__name__}, not {type(value).__name__}")
        if elem is not None and not all(isinstance(v, elem) for v in value):
            raise _problem(name, f"every item of {key} must be a {elem.__name__}")
    slug = data["slug"]
    if slug != stem:
        raise _problem(name, f"slug {slug!r} differs from the file name {stem!r}")
    if not _SLUG_RE.match(slug):
        raise _problem(name, f"slug {slug!r} is not lower-case words joined by '-'")
    for key in ("title", "cause", "fix"):
        if not data[key].strip():
            raise _problem(name, f"{key} is empty")
    if not data["scope"]:
        raise _problem(name, "scope is empty")
    bad = [s for s in data["scope"] if s not in SCOPES]
    if bad:
        raise _problem(name, f"scope {bad[0]!r} is not one of {', '.join(SCOPES)}")
    if data["auto"] not in AUTOS:
        raise _problem(name, f"auto {data['auto']!r} is not one of {', '.join(AUTOS)}")
    for check in data["checks"]:
        if not _SLUG_RE.match(check):
            raise _problem(name, f"check {check!r} is not a slug")
    knowledge_only = set(data["scope"]) <= {"message", "build"}
    if knowledge_only and data["checks"]:
        raise _problem(name, "a message/build-only entry has no checks")
    if knowledge_only and not data["patterns"]:
        raise _problem(name, "a message/build-only entry needs at least one pattern")
    for i, pattern in enumerate(data["patterns"]):
        if not pattern:
            raise _problem(name, f"patterns[{i}] is empty")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _problem(name, f"patterns[{i}] {pattern!r} does not compile: {exc}") from None
    for ref in data["references"]:
        if not ref.startswith(("http://", "https://")):
            raise _problem(name, f"reference {ref!r} is not an http(s) link")
    return Entry(
        slug=slug, title=data["title"].strip(), scope=tuple(data["scope"]),
        checks=tuple(data["checks"]), patterns=tuple(data["patterns"]), cause=data["cause"].strip(),
        fix=data["fix"].strip(), commands=tuple(data["commands"]), auto=data["auto"],
        exceptions=data["exceptions"].strip(), references=tuple(data["references"]), path=name,
    )


def load_file(path) -> Entry:
    """Read and validate one knowledge file (a Path or an importlib.resources Traversable)."""
    name = str(path)
    stem = path.name[:-5] if path.name.endswith(".toml") else path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _problem(name, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _problem(name, "not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise _problem(name, f"not valid TOML: {exc}") from None
    return _validate(name, stem, data)


def load(dirs: Iterable) -> "KnowledgeBase":
    """Load every ``*.toml`` of each directory, in order. A later directory's entry replaces
    an earlier one with the same slug (a plugin may refine a built-in entry)."""
    entries: dict[str, Entry] = {}
    for d in dirs:
        try:
            files = sorted((p for p in d.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)
        except OSError as exc:
            raise ToolError(f"knowledge directory {d}: {exc.strerror or exc}") from None
        for path in files:
            entry = load_file(path)
            entries[entry.slug] = entry
    from virtdoctor.knowledge.base import KnowledgeBase

    return KnowledgeBase(entries)


