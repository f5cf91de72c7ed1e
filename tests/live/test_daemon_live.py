"""Live: break the real daemon the way the catalogue says, show libvirt's own error, let
virtdoctor find it and fix it, and prove the fix by starting a real guest. The guards put the
daemon, its log directory and qemu.conf back even when a test fails."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import vmhelpers
from vmhelpers import daemon_pids, start_and_prove

LOG_DIR = Path("/var/log/libvirt")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def virsh(*args, uri="qemu:///system", timeout=30):
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=timeout)


def findings(run_virtdoctor, *args):
    rc, out, err = run_virtdoctor("--format", "json", *args)
    assert out, err
    return rc, json.loads(out)["findings"]


def by_id(items, slug):
    return [f for f in items if f["id"] == slug]


def wait_gone(name, timeout=15.0):
    deadline = time.monotonic() + timeout
    while daemon_pids(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not daemon_pids(name)


@pytest.fixture
def fresh_vm(live_host, vm_xml):
    """Define a tiny guest on a fresh connection (the daemon is restarted in these tests, so
    the shared libvirt_conn fixture would be stale); undefined after the test."""
    names = []

    def define(name):
        conn = vmhelpers.wait_for_uri(live_host.uri, 30)
        names.append(name)
        return conn, conn.defineXML(vm_xml(name))

    yield define
    if names:
        conn = vmhelpers.wait_for_uri(live_host.uri, 30)
        try:
            for n in names:
                vmhelpers.undefine_domain(conn, n)
        finally:
            conn.close()


def test_stopped_daemon_found_and_started(daemon_guard, run_virtdoctor, fresh_vm):
    daemon_guard.stop("libvirtd")
    broken = virsh("list")
    assert broken.returncode != 0
    assert "Failed to connect socket to '/var/run/libvirt/" in broken.stderr
    assert "No such file or directory" in broken.stderr

    rc, items = findings(run_virtdoctor, "check", "--only", "daemon-socket-missing")
    [f] = by_id(items, "daemon-socket-missing")
    assert f["status"] == "fail" and rc == 2
    assert "libvirtd is not running" in f["message"]
    assert f["fix"]["auto"] == "safe"

    rc, out, err = run_virtdoctor("fix", "--yes", "--only", "daemon-socket-missing")
    assert rc == 0, out + err
    assert "fixed" in out
    assert daemon_pids("libvirtd")

    conn, dom = fresh_vm("vdtest-daemon-started")
    try:
        proof = start_and_prove(dom)
    finally:
        conn.close()
    assert proof.pid > 0


def test_missing_log_dir_stops_libvirtd_and_fix_creates_it(daemon_guard, file_guard, run_virtdoctor, fresh_vm,
                                                           tmp_path):
    file_guard(LOG_DIR)
    daemon_guard.stop("libvirtd")
    shutil.move(str(LOG_DIR), str(tmp_path / "libvirt-logs-aside"))

    start = subprocess.run(["libvirtd", "-d"], capture_output=True, text=True, timeout=60)
    assert wait_gone("libvirtd"), "libvirtd kept running without its log directory"
    assert "failed to open /var/log/libvirt/libvirtd.log: No such file or directory" in start.stderr + start.stdout

    rc, items = findings(run_virtdoctor, "check", "--only", "daemon-log-dir-missing")
    [f] = by_id(items, "daemon-log-dir-missing")
    assert f["status"] == "fail" and "/var/log/libvirt" in f["evidence"]["missing"]

    rc, out, err = run_virtdoctor("fix", "--yes", "--only", "daemon-log-dir-missing", "daemon-socket-missing")
    assert rc == 0, out + err
    assert LOG_DIR.is_dir() and (LOG_DIR / "qemu").is_dir()
    assert oct(LOG_DIR.stat().st_mode & 0o777) == "0o700"
    assert daemon_pids("libvirtd")

    conn, dom = fresh_vm("vdtest-daemon-logdir")
    try:
        start_and_prove(dom)
    finally:
        conn.close()
    assert (LOG_DIR / "qemu" / "vdtest-daemon-logdir.log").exists()


def test_missing_qemu_user_breaks_daemon_and_unsafe_fix_restores(daemon_guard, file_guard, run_virtdoctor,
                                                                  fresh_vm):
    file_guard(QEMU_CONF)
    original = QEMU_CONF.read_text()
    QEMU_CONF.write_text(original + '\n# broken by a virtdoctor live test\nuser = "vdtest-nouser"\n')
    daemon_guard.stop("libvirtd")
    log = LOG_DIR / "libvirtd.log"
    offset = log.stat().st_size if log.exists() else 0
    subprocess.run(["libvirtd", "-d"], capture_output=True, text=True, timeout=60)
    assert wait_gone("libvirtd", 30), "libvirtd should exit when QEMU's user does not exist"
    with open(log, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        logged = fh.read()
    assert "Failed to parse user 'vdtest-nouser'" in logged
    assert "Initialization of QEMU state driver failed" in logged
    assert "Failed to connect socket" in virsh("list").stderr

    rc, items = findings(run_virtdoctor, "check", "--only", "qemu-user-missing")
    [f] = by_id(items, "qemu-user-missing")
    assert f["status"] == "fail" and f["fix"]["auto"] == "unsafe"
    assert "vdtest-nouser" in f["message"]

    rc, out, err = run_virtdoctor("fix", "--yes", "--only", "qemu-user-missing")
    assert "needs --unsafe" in out and "vdtest-nouser" in QEMU_CONF.read_text()

    rc, out, err = run_virtdoctor("fix", "--yes", "--unsafe", "--only", "qemu-user-missing")
    assert rc == 0, out + err
    assert "libvirtd -d" in out
    text = QEMU_CONF.read_text()
    assert 'user = "libvirt-qemu"' in text and "vdtest-nouser" not in text
    assert text.startswith(original)     # everything else, comments included, kept
    assert daemon_pids("libvirtd")

    conn, dom = fresh_vm("vdtest-daemon-qemuuser")
    try:
        start_and_prove(dom)
    finally:
        conn.close()


def test_qemu_user_fix_restarts_a_running_daemon_by_pid(daemon_guard, file_guard, run_virtdoctor):
    """The daemon runs with the old (good) account while qemu.conf now names a missing group:
    the fix restarts it by pid so the corrected file is read, and it comes back."""
    file_guard(QEMU_CONF)
    QEMU_CONF.write_text(QEMU_CONF.read_text() + '\ngroup = "vdtest-nogroup"\n')
    before = daemon_pids("libvirtd")
    assert before
    rc, items = findings(run_virtdoctor, "check", "--only", "qemu-user-missing")
    assert by_id(items, "qemu-user-missing")[0]["status"] == "fail"
    rc, out, err = run_virtdoctor("fix", "--yes", "--unsafe", "--only", "qemu-user-missing")
    assert rc == 0, out + err
    assert f"kill {' '.join(map(str, sorted(before)))}" in out
    after = daemon_pids("libvirtd")
    assert after and after.isdisjoint(before)
    assert 'group = "libvirt-qemu"' in QEMU_CONF.read_text()
    vmhelpers.wait_for_uri(None, 30).close()


def test_dbus_finding_matches_the_host(run_virtdoctor):
    rc, items = findings(run_virtdoctor, "check", "--only", "dbus-unavailable")
    [f] = by_id(items, "dbus-unavailable")
    exists = os.path.exists("/run/dbus/system_bus_socket")
    assert f["status"] == ("pass" if exists else "fail")
    if not exists:
        # what a normal user gets from the same host right now
        nobody = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", "virsh -c qemu:///system list"],
                                capture_output=True, text=True, timeout=30)
        assert "Unable to get system bus connection: Could not connect: No such file or directory" in nobody.stderr
        assert "Unable to get system bus connection" in f["message"]
