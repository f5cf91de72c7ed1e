#!/usr/bin/env python3
"""preflight over libvirt's corpus against virt-xml-validate, and the per-domain cost of check.

    python bench/preflight.py [--corpus DIR] [--runs N] [--domains N] [--skip-validate] [--skip-domains]

1. Corpus: one cold `virtdoctor --offline --format json preflight FILE...` process over every
   XML of ../shared/corpus/libvirt-9.0.0-qemuxml2argv (schema + every offline domain check),
   best of N runs, against `virt-xml-validate FILE domain` over the same files (one process
   per file, as people run it), in the same run; both verdict sets must be equal (libvirt's:
   1,048 valid, 22 invalid). Budget (DESIGN.md): preflight under 1.5 s.
2. Domains: cold `virtdoctor --format json check` with no vdtest-bench-* domains and with N
   (default 200) tiny inactive ones defined on qemu:///system; the difference divided by N is
   the cost per domain. Budget: under 5 ms per domain. The domains are undefined afterwards
   (the live tests' leftover sweep removes vdtest-* too).
"""
from __future__ import annotations

import argparse
import os
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchenv  # bench/benchenv.py, beside this script

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent.parent / "shared" / "corpus" / "libvirt-9.0.0-qemuxml2argv"
PREFLIGHT_BUDGET_S = 1.5
PER_DOMAIN_BUDGET_S = 0.005
PREFIX = "vdtest-bench-"



BENCH_ENV: dict[str, str] | None = None


def virtdoctor() -> list[str]:
    script = Path(sys.executable).parent / "virtdoctor"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "virtdoctor"]


def timed(argv: list[str], timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          env=BENCH_ENV)
    return time.perf_counter() - t0, proc


def bench_corpus(corpus: Path, runs: int, validate: bool) -> bool:
    files = sorted(str(p) for p in corpus.glob("*.xml"))
    print(f"corpus: {len(files)} domain XMLs in {corpus}")
    best, proc = None, None
    for _ in range(runs):
        t, proc = timed(virtdoctor() + ["--offline", "--format", "json", "preflight", *files])
        best = t if best is None else min(best, t)
    if proc.returncode == 3 or not proc.stdout.strip():
        print(f"  virtdoctor preflight failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        return False
    doc = json.loads(proc.stdout)
    schema = [f for f in doc["findings"] if f["id"] == "schema-invalid"]
    if schema and all(f["status"] == "skip" for f in schema):
        print(f"  schema-invalid skipped: {schema[0]['message']}")
    invalid = {Path(f["subject"][4:]).name for f in schema if f["status"] == "fail"}
    checks = len({f["id"] for f in doc["findings"]})
    s = doc["summary"]
    print(f"  virtdoctor preflight --offline: {best:6.2f} s (best of {runs}; schema + {checks - 1} domain checks, "
          f"{len(doc['findings'])} findings: {s['pass']} pass, {s['fail']} fail, {s['skip']} skip, "
          f"{s['error']} error); schema verdicts {len(files) - len(invalid)} valid / {len(invalid)} invalid"
          f"  [budget {PREFLIGHT_BUDGET_S} s: {'ok' if best < PREFLIGHT_BUDGET_S else 'OVER'}]")
    ok = best < PREFLIGHT_BUDGET_S
    if validate:
        tool = shutil.which("virt-xml-validate")
        if tool is None:
            print("  virt-xml-validate: not installed (libvirt-clients); no comparison")
            return ok
        t0 = time.perf_counter()
        theirs = set()
        for f in files:
            r = subprocess.run([tool, f, "domain"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            if r.returncode != 0:
                theirs.add(Path(f).name)
        t = time.perf_counter() - t0
        same = theirs == invalid
        print(f"  virt-xml-validate FILE domain:  {t:6.2f} s (one process per file); "
              f"{len(files) - len(theirs)} valid / {len(theirs)} invalid; verdicts "
              f"{'identical' if same else 'DIFFER: ' + ', '.join(sorted(theirs ^ invalid))}; "
              f"preflight is {t / best:.0f}x faster")
        ok = ok and same
    return ok


def domain_xml(name: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='/var/lib/libvirt/images/{name}.qcow2'/><target dev='vda' bus='virtio'/></disk>"
            "<interface type='network'><source network='default'/><model type='virtio'/></interface>"
            "<serial type='pty'/><memballoon model='none'/></devices></domain>")


def bench_domains(n: int, runs: int) -> bool:
    try:
        import libvirt
    except ImportError:
        print("domains: libvirt-python is not installed; skipped")
        return True
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        print(f"domains: qemu:///system not reachable ({exc.get_error_message()}); skipped")
        return True
    argv = virtdoctor() + ["--format", "json", "check"]

    def best_of() -> tuple[float, int]:
        best, count = None, 0
        for _ in range(runs):
            t, proc = timed(argv)
            if proc.returncode == 3:
                raise RuntimeError(proc.stderr.strip()[-300:])
            count = len({f["subject"] for f in json.loads(proc.stdout)["findings"]
                         if f["subject"].startswith("domain:" + PREFIX)})
            best = t if best is None else min(best, t)
        return best, count

    defined = []
    try:
        base, _ = best_of()
        for i in range(n):
            name = f"{PREFIX}{i}"
            try:
                conn.lookupByName(name).undefine()
            except libvirt.libvirtError:
                pass
            conn.defineXML(domain_xml(name))
            defined.append(name)
        loaded, seen = best_of()
    finally:
        for name in defined:
            try:
                conn.lookupByName(name).undefine()
            except libvirt.libvirtError:
                pass
        conn.close()
    after, _ = best_of()  # the baseline again: a daemon busy with other work skews one of them
    base = min(base, after)
    per = (loaded - base) / n
    note = "" if seen == n else f" (only {seen} of {n} seen: something else undefined vdtest-* meanwhile)"
    print(f"domains: virtdoctor check {base:.2f} s without, {loaded:.2f} s with {n} defined domains "
          f"({seen} checked; best of {runs}): {per * 1000:.2f} ms per domain{note} "
          f"[budget {PER_DOMAIN_BUDGET_S * 1000:.0f} ms: {'ok' if per < PER_DOMAIN_BUDGET_S else 'OVER'}]")
    return per < PER_DOMAIN_BUDGET_S and seen == n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--domains", type=int, default=200)
    ap.add_argument("--skip-validate", action="store_true", help="do not run virt-xml-validate (23 s)")
    ap.add_argument("--skip-domains", action="store_true", help="do not define domains on qemu:///system")
    args = ap.parse_args()
    global BENCH_ENV
    BENCH_ENV = benchenv.installed_like_pip()
    ok = True
    if args.corpus.is_dir():
        ok = bench_corpus(args.corpus, args.runs, not args.skip_validate) and ok
    else:
        print(f"corpus: {args.corpus} is absent; skipped")
    if not args.skip_domains:
        ok = bench_domains(args.domains, args.runs) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
