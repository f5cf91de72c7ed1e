"""The JSON document of DESIGN.md (contract v2): the run's envelope (see
:mod:`virtdoctor.render.report`), then the findings as `Finding.to_dict()` and the
command's own keys."""
from __future__ import annotations

import json
from typing import Any, TextIO

from virtdoctor.model import Finding, summarize
from virtdoctor.render.report import envelope


def document(command: str, target: dict[str, Any], findings: list[Finding] | None, **extra: Any) -> dict[str, Any]:
    """`findings` None: a document without summary/findings (explain)."""
    doc = envelope(command, target)
    if findings is not None:
        doc["summary"] = summarize(findings)
        doc["findings"] = [f.to_dict() for f in findings]
    doc.update(extra)
    return doc


def dump(doc: dict[str, Any], out: TextIO) -> None:
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")
