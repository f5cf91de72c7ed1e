"""Benchmark `virtdoctor explain --log`: scan a generated 100 MB log, report MB/s.

    python bench/explain_log.py [--size-mb 100] [--check]

The log mixes what a busy host writes: libvirtd debug/info lines (QEMU command lines,
monitor traffic, file handling), QEMU domain-log lines with CPUID warnings, journal lines,
and about one error line in a thousand from the catalogue (plus unknown errors). The budget
(DESIGN.md) is 50 MB/s; loading the knowledge files should take under 20 ms. The default path uses every core for files of 32 MB and more; the
single-process figure is printed too. --check exits 1 when the default path misses the budget.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from virtdoctor.knowledge import builtin_dir, load  # noqa: E402

BUDGET = 50.0

NOISE = [
    "{ts}: {tid}: info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)",
    "{ts}: {tid}: debug : virDomainObjListLoadAllConfigs:1040 : Scanning for configs in /etc/libvirt/qemu",
    "{ts}: {tid}: debug : qemuProcessStart:7712 : conn=0x7f5b3c00a5d0 driver=0x7f5b3c0153a0 vm=0x55f1{n:x} "
    "name=web{n} id=-1 asyncJob=start migrateFrom=<null> migrateFd=-1 migratePath=<null> snapshot=(nil) flags=0x1",
    "{ts}: {tid}: debug : virCommandRunAsync:2613 : About to run LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:"
    "/usr/sbin:/usr/bin HOME=/var/lib/libvirt/qemu/domain-{n}-web{n} /usr/bin/qemu-system-x86_64 -name "
    "guest=web{n},debug-threads=on -S -object '{{\"qom-type\":\"secret\",\"id\":\"masterKey0\",\"format\":\"raw\","
    "\"file\":\"/var/lib/libvirt/qemu/domain-{n}-web{n}/master-key.aes\"}}' -machine pc-q35-7.2,usb=off,"
    "vmport=off,dump-guest-core=off,memory-backend=pc.ram -accel kvm -cpu host,migratable=on -m 2048 "
    "-smp 2,sockets=2,cores=1,threads=1 -uuid 4dea22b3-1d52-d8f3-2516-782e98ab3fa0 -no-user-config -nodefaults",
    "{ts}: {tid}: info : qemuMonitorIOWrite:366 : QEMU_MONITOR_IO_WRITE: mon=0x7f5b30012340 "
    "buf={{\"execute\":\"query-block\",\"id\":\"libvirt-{n}\"}} len=51 ret=51 errno=0",
    "{ts}: {tid}: info : qemuMonitorJSONIOProcessLine:209 : QEMU_MONITOR_RECV_REPLY: mon=0x7f5b30012340 "
    "reply={{\"return\": [], \"id\": \"libvirt-{n}\"}}",
    "{ts}: {tid}: debug : virFileClose:110 : Closed fd {n}",
    "{ts}: {tid}: debug : virNetDevTapCreate:240 : created device: 'vnet{n}'",
    "{ts}: {tid}: warning : qemuDomainObjTaint:6075 : Domain id={n} name='web{n}' uuid=4dea22b3-1d52-d8f3-2516-"
    "782e98ab3fa0 is tainted: host-cpu",
    "{ts}: {tid}: debug : virSecurityDACSetOwnership:733 : Setting DAC user and group on "
    "'/var/lib/libvirt/images/web{n}.qcow2' to '64055:64055'",
    "{qts} qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]",
    "{qts} qemu-system-x86_64: terminating on signal 15 from pid {tid} (/usr/sbin/libvirtd)",
    "char device redirected to /dev/pts/{n} (label charserial0)",
    "Nov 25 20:00:58 kvm-host-01 systemd[1]: Started Virtualization daemon.",
]

ERRORS = [
    "{ts}: {tid}: error : qemuProcessReportLogError:2051 : internal error: qemu unexpectedly closed the monitor: "
    "{qts} qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]",
    "Could not access KVM kernel module: Permission denied",
    "{ts}: {tid}: error : virNetSocketNewConnectUNIX:700 : Failed to connect socket to "
    "'/var/run/libvirt/virtqemud-sock': No such file or directory",
    "{ts}: {tid}: error : virStorageSourceReportBrokenChain:5192 : Cannot access storage file "
    "'/home/u/web{n}.qcow2' (as uid:64055, gid:64055): Permission denied",
    "{ts}: {tid}: error : networkAllocatePort:4450 : Requested operation is not valid: network 'default' is not active",
    "{ts}: {tid}: error : qemuDomainUndefineFlags:6583 : Requested operation is not valid: cannot undefine domain with nvram",
    "{ts}: {tid}: error : virNetDevBridgeAddPort:123 : Unable to add bridge eth0 port vnet{n}: Operation not supported",
    "{ts}: {tid}: error : qemuValidateDomainDef:1234 : unsupported configuration: something libvirt has never said",
]


def generate(path: Path, size: int, seed: int = 2026) -> int:
    rnd = random.Random(seed)
    written = 0
    t0 = 1764100858.0
    with open(path, "w", encoding="utf-8") as fh:
        i = 0
        while written < size:
            i += 1
            t = t0 + i * 0.003
            ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}+0000"
            qts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1e6) % 1000000:06d}Z"
            pool = ERRORS if rnd.random() < 0.001 else NOISE
            line = rnd.choice(pool).format(ts=ts, qts=qts, tid=rnd.randint(1000, 9999), n=rnd.randint(1, 999)) + "\n"
            fh.write(line)
            written += len(line)
    return written


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--check", action="store_true", help="exit 1 when below the budget")
    args = ap.parse_args()
    kb = load([builtin_dir()])
    load_s = min(_timed(lambda: load([builtin_dir()])) for _ in range(5))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "libvirtd.log"
        size = generate(path, args.size_mb * 1_000_000)
        kb.scan_log(path)  # warm the page cache and the compiled patterns
        results = {}
        for label in ("default", "single-process"):
            best = None
            for _ in range(2):
                t = time.perf_counter()
                if label == "default":
                    report = kb.scan_log(path)
                else:
                    with open(path, "rb") as fh:
                        report = kb.scan_log(fh)  # a stream: always one process
                dt = time.perf_counter() - t
                best = dt if best is None else min(best, dt)
            results[label] = (size / best / 1e6, report)
    rate, report = results["default"]
    print(f"knowledge load: {len(kb)} files in {load_s * 1000:.1f} ms (budget 20 ms)")
    print(f"explain --log over {size / 1e6:.0f} MB ({report.lines} lines), {os.cpu_count()} cores:")
    for label, (r, _) in results.items():
        print(f"  {label:<15} {r:6.1f} MB/s  (budget {BUDGET:.0f} MB/s: {'ok' if r >= BUDGET else 'MISSED'})")
    for h in report.ranked():
        print(f"  {h.id:<26} {h.count:6d} lines  first {h.first}  last {h.last}")
    return 1 if args.check and rate < BUDGET else 0


if __name__ == "__main__":
    raise SystemExit(main())
