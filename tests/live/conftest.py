"""Fixtures for live tests: the real daemon, tiny guests, guards that put the host back.

Every test in this directory is marked `live` (see tests/conftest.py for the policy). What a
test creates is named vdtest-*; leftovers with that prefix are removed at session start and end.
One live session runs per host at a time (a flock on /run/lock/virtdoctor-live-tests.lock):
these tests stop the daemon and change /dev/kvm, so parallel sessions would break each other.

    libvirt_conn              read-write connection to qemu:///system, closed after the test
    vm_xml(name, **opts)      domain XML of a tiny guest (vmhelpers.build_vm_xml's options, plus
                              disk_mib=N for a fresh qcow2 that is deleted after the test);
                              type kvm when QEMU's account can use /dev/kvm, else qemu (TCG)
    define_vm(xml)            defines the domain; after the test: destroyed, undefined with NVRAM
    daemon_guard              a vmhelpers.DaemonGuard: .stop(name), .pids(name), .restore();
                              restored after the test
    file_guard(path)          snapshot of a file/dir/device node/absence; restored after the test
    run_virtdoctor(*args)     (rc, stdout, stderr) of `python -m virtdoctor ARGS`
    stored_domain(name, xml)  a config libvirt's define refuses, loaded by SIGHUP; removed after

and in vmhelpers: start_and_prove(dom) -> Proof, build_vm_xml, undefine_domain,
open_with_timeout, wait_for_uri, kvm_usable_by_qemu, cleanup_leftovers, PREFIX.
"""
from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import vmhelpers  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.live)


LIVE_LOCK = "/run/lock/virtdoctor-live-tests.lock"
LIVE_LOCK_WAIT = float(os.environ.get("VIRTDOCTOR_LIVE_LOCK_WAIT", "1800"))


def _hold_live_lock():
    """One live session per host at a time. Live tests stop the daemon, chmod
    /dev/kvm and sweep every vdtest-* object, so two sessions at once (two
    developers, a developer and a bench) destroy each other's work. A second
    session waits for the first (VIRTDOCTOR_LIVE_LOCK_WAIT seconds, default
    1800), then fails with the holder's pid."""
    os.makedirs(os.path.dirname(LIVE_LOCK), exist_ok=True)
    fd = os.open(LIVE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LIVE_LOCK_WAIT
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if time.monotonic() > deadline:
                os.close(fd)
                pytest.fail(f"another live test session (pid {holder}) holds {LIVE_LOCK}", pytrace=False)
            if not announced:
                print(f"\nwaiting for the live test session of pid {holder} ({LIVE_LOCK})", file=sys.stderr)
                announced = True
            time.sleep(1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@pytest.fixture(scope="session", autouse=True)
def _vdtest_leftovers(live_host):
    """Hold the host-wide live-test lock for the session; remove vdtest-*
    objects before the first live test and after the last one."""
    def sweep(when):
        conn = vmhelpers.wait_for_uri(live_host.uri, 30)
        try:
            removed = vmhelpers.cleanup_leftovers(conn)
        finally:
            conn.close()
        if removed:
            print(f"\nvdtest leftovers removed at session {when}: {', '.join(removed)}")

    if not live_host.ok:   # the policy in tests/conftest.py skips or fails the tests themselves
        yield
        return
    lock = _hold_live_lock()
    try:
        for log in vmhelpers.QEMU_LOG_DIR.glob(vmhelpers.PREFIX + "*"):  # logs of earlier sessions
            log.unlink(missing_ok=True)
        sweep("start")
        yield
        sweep("end")
    finally:
        os.close(lock)  # releases the flock


@pytest.fixture
def libvirt_conn(live_host):
    conn = vmhelpers.open_with_timeout(live_host.uri)
    yield conn
    try:
        conn.close()
    except Exception:  # the daemon may have been restarted under it
        pass


@pytest.fixture
def vm_xml(live_host):
    disks = []

    def build(name: str, *, virt_type: str | None = None, disk_mib: int | None = None,
              **opts) -> str:
        vmhelpers.check_name(name)
        if disk_mib:
            disks.append(vmhelpers.create_disk(name, disk_mib))
            opts["disk"] = disks[-1]
        return vmhelpers.build_vm_xml(name, virt_type=virt_type or ("kvm" if live_host.kvm else "qemu"),
                                      **opts)

    yield build
    for disk in disks:
        disk.unlink(missing_ok=True)


@pytest.fixture
def define_vm(libvirt_conn, live_host):
    names = []

    def define(xml: str):
        dom = libvirt_conn.defineXML(xml)
        names.append(dom.name())
        return dom

    yield define
    if names:
        conn = vmhelpers.wait_for_uri(live_host.uri, 30)  # a fresh one: the daemon may have restarted
        try:
            for name in names:
                vmhelpers.undefine_domain(conn, name)
        finally:
            conn.close()


@pytest.fixture
def daemon_guard(live_host):
    guard = vmhelpers.DaemonGuard(live_host.uri)
    yield guard
    guard.restore()


@pytest.fixture
def file_guard(tmp_path):
    guards = []

    def guard(path) -> vmhelpers.FileGuard:
        guards.append(vmhelpers.FileGuard(path, tmp_path / f"file-guard-{len(guards)}"))
        return guards[-1]

    yield guard
    errors = []
    for g in reversed(guards):
        try:
            g.restore()
        except Exception as exc:  # restore the others, then report
            errors.append(f"{g.path}: {exc}")
    if errors:
        raise RuntimeError("file_guard could not restore " + "; ".join(errors))


@pytest.fixture
def run_virtdoctor():
    return vmhelpers.run_virtdoctor


@pytest.fixture
def stored_domain(daemon_guard):
    """store(name, xml): put a domain XML where libvirt keeps its configs and make the daemon
    reload them (SIGHUP); returns the virDomain. Configs are loaded without validation, so this
    is how XML that today's define refuses reaches a daemon (a hand edit, a config from an older
    libvirt). The domains and files are removed afterwards."""
    import signal

    import libvirt

    names = []

    def store(name: str, xml: str):
        vmhelpers.check_name(name)
        path = f"/etc/libvirt/qemu/{name}.xml"
        assert not os.path.exists(path)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(xml)
        names.append(name)
        pids = daemon_guard.pids("libvirtd") or daemon_guard.pids("virtqemud")
        assert pids, "no libvirt daemon to reload"
        for pid in pids:
            os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            try:
                return vmhelpers.open_with_timeout().lookupByName(name)  # the domain keeps its connection
            except (RuntimeError, libvirt.libvirtError):
                assert time.monotonic() < deadline, f"{name} did not appear after SIGHUP"
                time.sleep(0.2)

    yield store
    conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30)
    try:
        for name in names:
            vmhelpers.undefine_domain(conn, name)
    finally:
        conn.close()
    for name in names:
        if os.path.exists(f"/etc/libvirt/qemu/{name}.xml"):
            os.unlink(f"/etc/libvirt/qemu/{name}.xml")
