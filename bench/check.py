#!/usr/bin/env python3
"""Cold-process wall time of `virtdoctor check` against `virt-host-validate qemu`, same run.

    python bench/check.py [--runs N] [--domains N] [--budget SECONDS]   (make bench: from .venv)

Each run is a fresh process (interpreter start, imports, libvirt connection, every check);
the table gives median and minimum over N runs against DESIGN.md's budget (check < 0.5 s
on a host with a few domains, under 5 ms per extra domain). --domains N (default 3) defines N
inactive tiny guests named vdtest-bench-* for the duration of the run (removed afterwards;
the live tests' leftover sweep removes them too), so the figure is for a host with domains. Exit statuses 0-2 of virtdoctor are findings about the host and
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

import benchenv  # bench/benchenv.py, beside this script

BUDGET_S = 0.5          # a host with a few domains
FEW_DOMAINS = 3
PER_DOMAIN_S = 0.005    # each domain beyond those



BENCH_ENV: dict[str, str] | None = None


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
                              timeout=300, env=BENCH_ENV)
        times.append(time.perf_counter() - t0)
        codes.append(proc.returncode)
        if proc.stderr.strip():
            last_err = proc.stderr.strip().splitlines()[-1]
    return times, codes, last_err


BENCH_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'/>
  </devices>
</domain>
"""


def define_bench_domains(count: int) -> list[str]:
    """Define `count` inactive vdtest-bench-NNN domains that do not exist yet; their names."""
    if count == 0:
        return []
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        have = {d.name() for d in conn.listAllDomains()}
        made = []
        for i in range(count):
            name = f"vdtest-bench-{i:04d}"
            if name not in have:
                conn.defineXML(BENCH_XML.format(name=name))
                made.append(name)
        return made
    finally:
        conn.close()


def undefine_bench_domains(names: list[str]) -> None:
    if not names:
        return
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        for name in names:
            conn.lookupByName(name).undefine()
    finally:
        conn.close()


def domain_count() -> int | None:
    virsh = shutil.which("virsh")
    if not virsh:
        return None
    proc = subprocess.run([virsh, "-q", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return None
    return len([l for l in proc.stdout.splitlines() if l.strip()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="cold runs per command (default 7)")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help=f"budget for virtdoctor check in seconds (default {BUDGET_S})")
    parser.add_argument("--domains", type=int, default=3,
                        help="define this many inactive vdtest-bench-* guests for the run (default 3)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.domains < 0:
        parser.error("--runs must be at least 1 and --domains at least 0")

    vd = virtdoctor_command()
    if vd is None:
        print(f"bench: virtdoctor is not importable from {sys.executable}; "
              f"run `make install` (or pip install -e .) first", file=sys.stderr)
        return 1

    try:
        made = define_bench_domains(args.domains)
    except Exception as exc:  # no libvirt-python, no daemon: say so, time the host as it is
        print(f"bench: cannot define bench domains ({exc}); timing without them", file=sys.stderr)
        made = []
    try:
        return run_bench(vd, args)
    finally:
        undefine_bench_domains(made)


def run_bench(vd: list[str], args) -> int:
    global BENCH_ENV
    BENCH_ENV = benchenv.installed_like_pip()
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

    domains = domain_count()
    budget = args.budget + PER_DOMAIN_S * max(0, (domains or 0) - FEW_DOMAINS)
    rows[0] = rows[0][:2] + (budget,) + rows[0][3:]
    print(f"cold runs: {args.runs} each; domains on qemu:///system: "
          f"{'unknown' if domains is None else domains}; python {sys.version.split()[0]}")
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
