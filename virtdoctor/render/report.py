"""The run's envelope of contract v2 (DESIGN.md "Contract v2"): target, clock, --output.

Every JSON document starts with::

    virtdoctor  version            schema      2
    command     the subcommand     target      {hostname, host (v1), uri, facts_source, root, ...}
    started_at  ISO 8601 UTC       duration_s  seconds since the run started

and keeps every v1 key after it (summary, findings, causes, matches, actions, errors ...).
`virtdoctor/schema/report-v2.json`, shipped in the package, is its JSON Schema.

A :class:`Run` belongs to one CLI invocation (created with the `Context`): its clock, the
`--output FILE` path, and the last document built for it, which the CLI writes to FILE
whatever the exit status (a run that ends with status 3 writes a document with `error`).
The `target` of a document is a :class:`Target`, a dict that knows its run, so a command
building its document through :func:`virtdoctor.render.json.document` needs nothing else.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from virtdoctor import __version__

SCHEMA_VERSION = 2
FACTS_SOURCES = ("live", "root", "sosreport", "remote")


def schema_path() -> str:
    """The JSON Schema of the document (package data)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema", "report-v2.json")


@dataclass
class Run:
    """One invocation: when it started, where --output goes, the document built."""

    output: str | None = None
    wall: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    mono: float = field(default_factory=time.monotonic)
    document: dict[str, Any] | None = None
    written: bool = False

    @property
    def started_at(self) -> str:
        return self.wall.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def duration(self) -> float:
        return round(time.monotonic() - self.mono, 3)


class Target(dict):
    """The document's `target` object; `run` (not serialised) is the run it belongs to."""

    run: Run | None = None


def make_target(run: Run | None, *, root: str = "/", uri: str | None = None, facts_source: str | None = None,
                **more: Any) -> Target:
    """hostname (and v1's `host`), uri (None when no connection is involved), facts_source
    (`live`, or `root` with --root; `sosreport`/`remote` are set by those sources) and root,
    plus command-specific keys (domain, inputs)."""
    root = root or "/"
    if facts_source is None:
        facts_source = "live" if os.path.normpath(root) == "/" else "root"
    name = socket.gethostname()
    t = Target(hostname=name, host=name, uri=uri, facts_source=facts_source, root=root)
    t.update(more)
    t.run = run
    return t


def envelope(command: str, target: dict[str, Any]) -> dict[str, Any]:
    """The first keys of every document; records the document on the target's run."""
    run = getattr(target, "run", None)
    doc: dict[str, Any] = {"virtdoctor": __version__, "schema": SCHEMA_VERSION, "command": command,
                           "target": dict(target)}
    if run is not None:
        doc["started_at"] = run.started_at
        doc["duration_s"] = run.duration()
        run.document = doc
    else:
        doc["started_at"] = Run().started_at
        doc["duration_s"] = 0.0
    return doc


def error_document(run: Run, command: str, target: dict[str, Any], message: str) -> dict[str, Any]:
    """What --output FILE gets when the run could not do its job (status 3)."""
    doc = envelope(command, target)
    doc["error"] = message
    return doc


def write_output(path: str, doc: dict[str, Any]) -> None:
    """The document to PATH, atomically (temporary file in the same directory, rename)."""
    import tempfile

    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".virtdoctor-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
