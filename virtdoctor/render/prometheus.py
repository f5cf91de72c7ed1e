"""Prometheus exposition of a `check` run, for node_exporter's textfile collector
(`--textfile PATH`) or stdout (`--format prometheus`).

Series (labels carry ids, severities, subjects and statuses only: never a
message or a path, so the series set stays small and stable):

  virtdoctor_check_failures{id,severity}   one per check that ran, always present:
                                           its failing findings (0 when it passes)
  virtdoctor_finding{id,severity,subject,status}
                                           per non-passing finding (fail, skip, error):
                                           how many (a check may fail on several pools of a host)
  virtdoctor_checks{status}                findings per status (pass, fail, skip, error)
  virtdoctor_last_run_timestamp_seconds    when the run started (Unix time)
  virtdoctor_last_run_duration_seconds     how long it took
  virtdoctor_last_run_exit_code            0 ok, 1 warnings, 2 errors, 3 virtdoctor failed
  virtdoctor_build_info{version}           1

Rendered with prometheus_client (the optional extra `virtdoctor[prometheus]`).
A run that fails with status 3 still writes the textfile, with the run series
only, so a rule can alert on it."""
from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from typing import Any, Iterable

from virtdoctor import __version__
from virtdoctor.model import ToolError

MISSING = ("--format prometheus and --textfile need the prometheus_client package: "
           "pip install 'virtdoctor[prometheus]' (Debian: apt-get install python3-prometheus-client)")
STATUSES = ("pass", "fail", "skip", "error")


def require():
    """The prometheus_client module, or ToolError with how to install it."""
    return _client()[0]


def _client():
    try:
        import prometheus_client
        from prometheus_client import CollectorRegistry, Gauge
    except ImportError:
        raise ToolError(MISSING) from None
    return prometheus_client, CollectorRegistry, Gauge


def _started(doc: dict[str, Any]) -> float:
    value = doc.get("started_at")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def exposition(doc: dict[str, Any] | None, code: int, checks: Iterable[tuple[str, str]] = (),
               duration: float | None = None, started: float | None = None) -> str:
    """The exposition text. `checks` are (slug, severity) of every check that
    ran, so that a passing check has its failure series at 0; `doc` is the
    JSON document (None when the run failed before it had findings)."""
    client, CollectorRegistry, Gauge = _client()
    reg = CollectorRegistry()
    run = dict(registry=reg)
    if doc is not None:
        findings = doc.get("findings", [])
        failures = Gauge("virtdoctor_check_failures", "Failing findings of each check that ran (0: it passes)",
                         ["id", "severity"], **run)
        severity = dict(checks)
        for f in findings:
            severity.setdefault(f["id"], f.get("severity", "error"))
        counts = {slug: 0 for slug in severity}
        for f in findings:
            if f["status"] == "fail":
                counts[f["id"]] += 1
        for slug in sorted(counts):
            failures.labels(slug, severity[slug]).set(counts[slug])
        finding = Gauge("virtdoctor_finding", "One series per finding that did not pass",
                        ["id", "severity", "subject", "status"], **run)
        for f in findings:
            if f["status"] != "pass":
                # several findings of one check on one subject (e.g. two pools): one series, their count
                finding.labels(f["id"], f.get("severity", "error"), f.get("subject", "host"), f["status"]).inc()
        by_status = Gauge("virtdoctor_checks", "Findings of the last run by status", ["status"], **run)
        for s in STATUSES:
            by_status.labels(s).set(sum(f["status"] == s for f in findings))
        if duration is None and doc.get("duration_s") is not None:
            duration = float(doc["duration_s"])
        if started is None:
            started = _started(doc)
    Gauge("virtdoctor_last_run_timestamp_seconds", "When the last virtdoctor run started",
          **run).set(started if started is not None else time.time())
    Gauge("virtdoctor_last_run_duration_seconds", "How long the last virtdoctor run took",
          **run).set(duration if duration is not None else 0.0)
    Gauge("virtdoctor_last_run_exit_code", "Exit status of the last run: 0 ok, 1 warnings, 2 errors, 3 failed",
          **run).set(code)
    Gauge("virtdoctor_build_info", "virtdoctor's version", ["version"], **run).labels(__version__).set(1)
    return client.generate_latest(reg).decode("utf-8")


def write_textfile(path: str, text: str) -> None:
    """Write atomically for node_exporter: a temporary file in the target
    directory (its name does not end in .prom, so the collector never reads it
    half written), mode 0644, fsync, then rename over PATH."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ToolError(f"--textfile {path}: {directory} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        raise ToolError(f"--textfile {path}: cannot write in {directory}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ToolError(f"--textfile {path}: {exc.strerror or exc}") from None
        raise
