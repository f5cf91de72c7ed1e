"""JUnit XML from the JSON document: one <testsuite> per subject (the host, each
domain, each input file), one <testcase> per check on it. fail -> <failure>,
error (the check crashed) -> <error>, skip -> <skipped>. CI systems and the
Ansible report callback read it as they read any test report."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import OrderedDict
from typing import Any, TextIO


def _body(f: dict[str, Any]) -> str:
    lines = [f.get("message") or f.get("title") or ""]
    fix = f.get("fix") or {}
    if fix.get("summary"):
        lines.append(f"fix ({fix.get('auto', 'manual')}): {fix['summary']}")
    lines.extend(f"  $ {c}" for c in fix.get("commands") or ())
    return "\n".join(lines)


def build(doc: dict[str, Any]) -> ET.Element:
    command = doc.get("command", "check")
    suites: OrderedDict[str, list[dict]] = OrderedDict()
    for f in doc.get("findings", []):
        suites.setdefault(f.get("subject") or "host", []).append(f)
    top = ET.Element("testsuites", name=f"virtdoctor {command}")
    totals = dict(tests=0, failures=0, errors=0, skipped=0)
    target = doc.get("target") or {}
    hostname = str(target.get("hostname") or target.get("host") or "")
    for subject, items in suites.items():
        counts = dict(tests=len(items),
                      failures=sum(f["status"] == "fail" for f in items),
                      errors=sum(f["status"] == "error" for f in items),
                      skipped=sum(f["status"] == "skip" for f in items))
        suite = ET.SubElement(top, "testsuite", name=subject, **{k: str(v) for k, v in counts.items()})
        if hostname:
            suite.set("hostname", hostname)
        for f in items:
            case = ET.SubElement(suite, "testcase", name=f["id"], classname=f"virtdoctor.{command}.{subject}")
            status = f["status"]
            if status == "fail":
                el = ET.SubElement(case, "failure", message=f.get("message") or f.get("title", ""),
                                   type=f.get("severity", "error"))
                el.text = _body(f)
            elif status == "error":
                el = ET.SubElement(case, "error", message=f.get("message", ""), type="check-crashed")
                el.text = f.get("message", "")
            elif status == "skip":
                ET.SubElement(case, "skipped", message=f.get("message", ""))
        for k in totals:
            totals[k] += counts[k]
    for k, v in totals.items():
        top.set(k, str(v))
    if doc.get("duration_s") is not None:
        top.set("time", f"{float(doc['duration_s']):.3f}")
    return top


def render(doc: dict[str, Any], out: TextIO) -> None:
    top = build(doc)
    ET.indent(top)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(top, encoding="unicode"))
    out.write("\n")
