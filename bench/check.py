#!/usr/bin/env python3
"""Cold-process wall time of `virtdoctor check` against `virt-host-validate qemu`, same run.

    python bench/check.py [--runs N] [--budget SECONDS]      (make bench runs it from .venv)

Each run is a fresh process (interpreter start, imports, libvirt connection, every check);
the table gives median and minimum over N runs against DESIGN.md's budget (check < 0.5 s
on a host with a few domains). Exit statuses 0-2 of virtdoctor are findings about the host and
do not matter here; status 3 means virtdoctor could not do its job, so its time means nothing
and the table says so.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 0.5


def virtdoctor_command() -> list[str] | None:
    """The console script beside this interpreter, else `python -m virtdoctor`; None when
    virtdoctor is not importable here."""
    if importlib.util.find_spec("virtdoctor") is None:
        return None
    script = Path(sys.executable).parent / "virtdoctor"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "virtdoctor"]


def time_runs(argv: list[str], runs: int) -> tuple[list[float], list[int], str]:
    """Wall times and exit statuses of `runs` cold runs; the last stderr line seen."""
    times, codes, last_err = [], [], ""
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=300)
        times.append(time.perf_counter() - t0)
        codes.append(proc.returncode)
        if proc.stderr.strip():
            last_err = proc.stderr.strip().splitlines()[-1]
    return times, codes, last_err


def domain_count() -> str:
    virsh = shutil.which("virsh")
    if not virsh:
        return "unknown (no virsh)"
    proc = subprocess.run([virsh, "-q", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"unknown ({proc.stderr.strip() or 'virsh failed'})"
    return str(len([l for l in proc.stdout.splitlines() if l.strip()]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="cold runs per command (default 7)")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help=f"budget for virtdoctor check in seconds (default {BUDGET_S})")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    vd = virtdoctor_command()
    if vd is None:
        print(f"bench: virtdoctor is not importable from {sys.executable}; "
              f"run `make install` (or pip install -e .) first", file=sys.stderr)
        return 1

    rows = []
    cmd = vd + ["check", "--format", "json"]
    times, codes, err = time_runs(cmd, args.runs)
    note = f"exit {sorted(set(codes))}"
    if 3 in codes:
        note += f": virtdoctor could not do its job, time not meaningful ({err})"
    rows.append(("virtdoctor check --format json", times, args.budget, note))

    vhv = shutil.which("virt-host-validate")
    if vhv:
        times, codes, _ = time_runs([vhv, "qemu"], args.runs)
        rows.append(("virt-host-validate qemu", times, None, f"exit {sorted(set(codes))}"))
    else:
        rows.append(("virt-host-validate qemu", None, None, "not installed (libvirt-clients)"))

    print(f"cold runs: {args.runs} each; domains on qemu:///system: {domain_count()}; "
          f"python {sys.version.split()[0]}")
    print(f"{'command':32} {'median':>9} {'min':>9} {'budget':>8}  verdict")
    for name, times, budget, note in rows:
        if times is None:
            print(f"{name:32} {'-':>9} {'-':>9} {'-':>8}  {note}")
            continue
        med, low = statistics.median(times), min(times)
        if budget is None:
            verdict, budget_text = "reference", "-"
        else:
            verdict = "within budget" if med < budget else "OVER budget"
            budget_text = f"{budget:.2f} s"
        if "not meaningful" in note:
            verdict = "INVALID"
        print(f"{name:32} {med:8.3f}s {low:8.3f}s {budget_text:>8}  {verdict} ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
