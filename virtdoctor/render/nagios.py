"""Nagios/Icinga plugin output from the JSON document: one status line with
performance data, then one line per non-passing finding (the plugin's long
output). virtdoctor's exit statuses already are the plugin codes: 0 OK,
1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
from __future__ import annotations

from typing import Any, TextIO

STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def _clean(text: str) -> str:
    # '|' starts the perfdata; newlines end the status line
    return " ".join(str(text).replace("|", "/").split())


def status_line(doc: dict[str, Any], code: int) -> str:
    findings = doc.get("findings", [])
    failed = [f for f in findings if f["status"] == "fail"]
    errors = [f for f in failed if f.get("severity") == "error"]
    warnings = [f for f in failed if f.get("severity") != "error"]
    crashed = [f for f in findings if f["status"] == "error"]
    skipped = sum(f["status"] == "skip" for f in findings)
    passed = sum(f["status"] == "pass" for f in findings)
    state = STATES.get(code, "UNKNOWN")
    if errors or warnings or crashed:
        parts = []
        if errors:
            parts.append(f"{len(errors)} error{'s' * (len(errors) != 1)}")
        if warnings:
            parts.append(f"{len(warnings)} warning{'s' * (len(warnings) != 1)}")
        if crashed:
            parts.append(f"{len(crashed)} check{'s' * (len(crashed) != 1)} crashed")
        slugs = list(dict.fromkeys(f["id"] for f in errors + warnings + crashed))
        text = ", ".join(parts) + ": " + ", ".join(slugs)
    else:
        text = f"{passed} checks passed"
    perf = [f"ok={passed}", f"errors={len(errors)}", f"warnings={len(warnings)}", f"skipped={skipped}",
            f"crashed={len(crashed)}"]
    if doc.get("duration_s") is not None:
        perf.append(f"duration={float(doc['duration_s']):.3f}s")
    return f"VIRTDOCTOR {state} - {_clean(text)} | {' '.join(perf)}"


def render(doc: dict[str, Any], out: TextIO, code: int) -> None:
    out.write(status_line(doc, code) + "\n")
    for f in doc.get("findings", []):
        if f["status"] in ("fail", "error"):
            word = "ERROR" if f["status"] == "error" else f.get("severity", "error").upper()
            out.write(_clean(f"{word} {f['id']} {f.get('subject', '')}: {f.get('message') or f.get('title', '')}") + "\n")


def unknown(message: str, out: TextIO) -> None:
    """What a plugin prints when it cannot do its job (exit status 3)."""
    out.write(f"VIRTDOCTOR UNKNOWN - {_clean(message)}\n")
