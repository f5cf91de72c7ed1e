"""A fix finishes the job (issue 9, item 1): the daemon exited because /var/log/libvirt is gone;
`fix --yes --only daemon-log-dir-missing` creates it AND starts the daemon again with the arguments
it is configured to start with, waiting until its socket answers; then `virsh list` and a guest
start succeed. The log directory and the daemon are put back afterwards."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import vmhelpers

LOG_DIR = "/var/log/libvirt"
SAVED = "/var/log/vdtest-libvirt-saved"
NAME = "vdtest-finish-logdir"


@pytest.fixture
def log_dir_gone(daemon_guard):
    if os.path.exists(SAVED):
        pytest.fail(f"{SAVED} exists: a previous run did not restore {LOG_DIR}")
    daemon_guard.stop("libvirtd")
    os.rename(LOG_DIR, SAVED)
    try:
        yield
    finally:
        daemon_guard.stop("libvirtd")  # it writes to the directory the fix made
        if os.path.isdir(LOG_DIR):
            shutil.rmtree(LOG_DIR)
        os.rename(SAVED, LOG_DIR)
        daemon_guard.restore()


def test_log_dir_fix_brings_the_daemon_back(log_dir_gone, vm_xml, run_virtdoctor):
    p = subprocess.run(["libvirtd", "-d"], capture_output=True, text=True, timeout=30)
    time.sleep(0.5)
    print("libvirtd -d:", p.returncode, p.stderr.strip())
    assert not vmhelpers.daemon_pids("libvirtd")  # it exited: "failed to open /var/log/libvirt/libvirtd.log"
    assert "failed to open /var/log/libvirt/libvirtd.log: No such file or directory" in p.stderr

    t0 = time.monotonic()
    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--only", "daemon-log-dir-missing")
    took = time.monotonic() - t0
    print(out[-2500:], err, f"fix took {took:.2f} s")
    doc = json.loads(out)
    assert "libvirtd -d" in out and '"fixed"' in out, out
    assert vmhelpers.daemon_pids("libvirtd")
    v = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all"], capture_output=True, text=True, timeout=30)
    assert v.returncode == 0, v.stderr
    conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30)
    try:
        dom = conn.defineXML(vm_xml(NAME))
        try:
            proof = vmhelpers.start_and_prove(dom)
            print(f"guest ran: {proof}")
        finally:
            vmhelpers.undefine_domain(conn, NAME)
    finally:
        conn.close()
    assert doc
