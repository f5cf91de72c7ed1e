"""The JSON document of DESIGN.md: one object, findings as `Finding.to_dict()`."""
from __future__ import annotations

import json
from typing import Any, TextIO

from virtdoctor import __version__
from virtdoctor.model import Finding, summarize


def document(command: str, target: dict[str, Any], findings: list[Finding], **extra: Any) -> dict[str, Any]:
    doc = {"virtdoctor": __version__, "command": command, "target": target,
           "summary": summarize(findings), "findings": [f.to_dict() for f in findings]}
    doc.update(extra)
    return doc


def dump(doc: dict[str, Any], out: TextIO) -> None:
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")
