"""SARIF 2.1.0 for `preflight`: one run, one rule per check (rule id = slug,
help from its knowledge entry), one result per failing finding located at the
file and line of the element it is about. Schema findings carry their line;
for the others the line is looked up in the parsed tree: the element whose
attribute or text is a value of the finding's evidence, else the <domain>
element. Code-scanning tools (GitHub, GitLab, VS Code's SARIF viewer) show
them as annotations on the XML."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from virtdoctor import __version__

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/virtdoctor/virtdoctor"
LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def element_line(dom, evidence: dict[str, Any]) -> int:
    """The line of the element a finding is about (1-based)."""
    line = evidence.get("line")
    if isinstance(line, int) and line > 0:
        return line
    root = dom.tree.getroot()
    wanted = [v.strip() for v in _strings(evidence) if len(v.strip()) >= 2]
    if wanted:
        index: dict[str, int] = {}
        for el in root.iter():
            if not isinstance(el.tag, str) or el.sourceline is None:
                continue
            for v in el.attrib.values():
                index.setdefault(v.strip(), el.sourceline)
            if el.text and el.text.strip():
                index.setdefault(el.text.strip(), el.sourceline)
        for v in wanted:
            if v in index:
                return index[v]
    return root.sourceline or 1


def _uri(source: str) -> str:
    if source == "-":
        return "stdin"
    if os.path.isabs(source):
        return Path(source).as_uri()
    return Path(source).as_posix()


def _help(entry, title: str) -> dict[str, str]:
    if entry is None:
        return {"text": title}
    parts = [entry.cause, f"Fix: {entry.fix}" if entry.fix else ""]
    md = [f"**Cause:** {entry.cause}", "", f"**Fix:** {entry.fix}"]
    if entry.commands:
        parts.append("Commands: " + "; ".join(entry.commands))
        md += ["", "```", *entry.commands, "```"]
    if entry.exceptions:
        parts.append(f"Exceptions: {entry.exceptions}")
        md += ["", f"**Exceptions:** {entry.exceptions}"]
    return {"text": "\n".join(p for p in parts if p), "markdown": "\n".join(md)}


def build(doc: dict[str, Any], domains: list, checks: list, lookup: Callable[[str], Any]) -> dict[str, Any]:
    """`domains`: the parsed inputs (their trees give the lines); `checks`: the
    checks that ran (rules); `lookup(slug)`: the knowledge entry or None."""
    by_subject = {d.subject: d for d in domains}
    rules, index = [], {}
    for chk in checks:
        if chk.slug in index:
            continue
        index[chk.slug] = len(rules)
        sev = getattr(chk.severity, "value", str(chk.severity))
        entry = lookup(chk.slug)
        rules.append({"id": chk.slug, "name": chk.slug, "shortDescription": {"text": chk.title},
                      "fullDescription": {"text": (entry.cause if entry else "") or chk.title},
                      "help": _help(entry, chk.title),
                      "defaultConfiguration": {"level": LEVEL.get(sev, "warning")},
                      "properties": {"area": chk.area}})
    results, notes, artifacts, art_index = [], [], [], {}
    for f in doc.get("findings", []):
        dom = by_subject.get(f.get("subject"))
        if f["status"] == "error":
            notes.append({"level": "error", "message": {"text": f"{f['id']} crashed on {f['subject']}: {f['message']}"},
                          "descriptor": {"id": f["id"]}})
            continue
        if f["status"] != "fail":
            continue
        res: dict[str, Any] = {"ruleId": f["id"], "level": LEVEL.get(f.get("severity", "error"), "warning"),
                               "message": {"text": f.get("message") or f.get("title", "")}}
        if f["id"] in index:
            res["ruleIndex"] = index[f["id"]]
        if dom is not None:
            uri = _uri(dom.source)
            if uri not in art_index:
                art_index[uri] = len(artifacts)
                artifacts.append({"location": {"uri": uri}})
            res["locations"] = [{"physicalLocation": {
                "artifactLocation": {"uri": uri, "index": art_index[uri]},
                "region": {"startLine": element_line(dom, f.get("evidence") or {})}}}]
        fix = f.get("fix") or {}
        if fix.get("summary"):
            res["properties"] = {"fix": fix}
        results.append(res)
    invocation: dict[str, Any] = {"executionSuccessful": not doc.get("errors") and not notes}
    if notes:
        invocation["toolExecutionNotifications"] = notes
    if doc.get("errors"):
        invocation.setdefault("toolExecutionNotifications", []).extend(
            {"level": "error", "message": {"text": e["error"]}} for e in doc["errors"])
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "virtdoctor", "version": __version__, "informationUri": INFO_URI,
                            "rules": rules}},
        "artifacts": artifacts, "results": results, "invocations": [invocation]}]}


def render(doc: dict[str, Any], out: TextIO, domains: list, checks: list, lookup: Callable[[str], Any]) -> None:
    json.dump(build(doc, domains, checks, lookup), out, indent=2, ensure_ascii=False)
    out.write("\n")
