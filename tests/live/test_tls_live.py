"""Live: TLS on the real daemon. `qemu://localhost/system` without a CA fails with libvirt's
own text; virtdoctor finds it, its unsafe fix writes a CA plus server and client certificates,
and a libvirtd started with --listen then serves a real TLS connection. /etc/pki and the
daemon are put back afterwards, whatever happens."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

import vmhelpers
from vmhelpers import daemon_pids, stop_pids

TLS_URI = "qemu://localhost/system"
PKI = Path("/etc/pki")


def virsh(*args, uri=TLS_URI, timeout=30):
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=timeout)


def findings(run_virtdoctor, *args):
    rc, out, err = run_virtdoctor("--format", "json", "-c", TLS_URI, *args)
    assert out, err
    return rc, json.loads(out)["findings"]


def status_of(items, slug):
    return {f["status"] for f in items if f["id"] == slug}


@pytest.fixture
def clean_pki(file_guard):
    file_guard(PKI)
    if PKI.exists():
        import shutil
        shutil.rmtree(PKI)
    return PKI


@pytest.fixture
def listening_daemon(daemon_guard):
    """start() stops the running libvirtd (by pid) and starts `libvirtd -d --listen`
    (listen_tls defaults to 1 with --listen); what it started is stopped by pid afterwards,
    then daemon_guard brings the ordinary daemon back."""
    started: set[int] = set()

    def start(timeout=30.0):
        daemon_guard.stop("libvirtd")
        proc = subprocess.run(["libvirtd", "-d", "--listen"], capture_output=True, text=True, timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = daemon_pids("libvirtd")
            started.update(pids)
            if pids and os.path.exists("/run/libvirt/libvirt-sock"):
                break
            if not pids and time.monotonic() > deadline - timeout + 3:
                break   # it exited: the caller looks at why
            time.sleep(0.1)
        time.sleep(0.5)
        return proc, daemon_pids("libvirtd")

    yield start
    mine = started & daemon_pids("libvirtd")
    if mine:
        stop_pids(mine)


def log_since(offset: int) -> str:
    log = Path("/var/log/libvirt/libvirtd.log")
    with open(log, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        return fh.read()


def log_size() -> int:
    log = Path("/var/log/libvirt/libvirtd.log")
    return log.stat().st_size if log.exists() else 0


def test_tls_uri_without_ca_then_fix_and_a_real_tls_connection(clean_pki, listening_daemon, run_virtdoctor):
    broken = virsh("uri")
    assert broken.returncode != 0
    assert "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory" in broken.stderr

    rc, items = findings(run_virtdoctor, "check", "--only", "tls-ca-missing", "tls-server-cert-missing",
                         "tls-client-cert-missing", "uri-implies-tls", "tcp-listen-disabled")
    assert rc == 2
    for slug in ("tls-ca-missing", "tls-server-cert-missing", "tls-client-cert-missing", "uri-implies-tls",
                 "tcp-listen-disabled"):
        assert status_of(items, slug) == {"fail"}, (slug, items)
    [ca] = [f for f in items if f["id"] == "tls-ca-missing"]
    assert ca["message"] == "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory"
    assert ca["fix"]["auto"] == "unsafe"

    rc, out, err = run_virtdoctor("-c", TLS_URI, "fix", "--yes", "--only", "tls-ca-missing")
    assert "needs --unsafe" in out and not PKI.exists()

    rc, out, err = run_virtdoctor("-c", TLS_URI, "fix", "--yes", "--unsafe", "--only", "tls-ca-missing",
                                  "tls-server-cert-missing", "tls-client-cert-missing")
    assert rc == 0, out + err
    for key in ("/etc/pki/CA/private/cakey.pem", "/etc/pki/libvirt/private/serverkey.pem",
                "/etc/pki/libvirt/private/clientkey.pem"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    rc, items = findings(run_virtdoctor, "check", "--only", "tls-ca-missing", "tls-server-cert-missing",
                         "tls-client-cert-missing", "tls-cert-invalid")
    assert {f["status"] for f in items} == {"pass"}, items

    proc, pids = listening_daemon()
    assert pids, f"libvirtd --listen did not stay up: {proc.stderr}"
    ok = virsh("uri")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == TLS_URI
    conn = vmhelpers.open_with_timeout(TLS_URI, timeout=15)
    try:
        assert conn.getLibVersion() >= 9000000
        conn.listAllDomains()
    finally:
        conn.close()

    rc, items = findings(run_virtdoctor, "check", "--only", "tcp-listen-disabled", "tls-cert-invalid")
    assert status_of(items, "tcp-listen-disabled") == {"pass"}, items
    assert status_of(items, "tls-cert-invalid") == {"pass"}, items


def test_listening_daemon_without_server_cert_then_fix_with_the_existing_ca(clean_pki, listening_daemon,
                                                                           run_virtdoctor):
    rc, out, err = run_virtdoctor("-c", TLS_URI, "fix", "--yes", "--unsafe", "--only", "tls-ca-missing")
    assert rc == 0, out + err
    ca_before = Path("/etc/pki/CA/cacert.pem").read_bytes()
    client_before = Path("/etc/pki/libvirt/clientcert.pem").read_bytes()
    Path("/etc/pki/libvirt/servercert.pem").unlink()

    offset = log_size()
    proc, pids = listening_daemon(timeout=10)
    assert not pids, "libvirtd --listen should refuse to start without its server certificate"
    said = proc.stderr + proc.stdout + log_since(offset)
    assert "Cannot read certificate '/etc/pki/libvirt/servercert.pem': No such file or directory" in said

    rc, items = findings(run_virtdoctor, "check", "--only", "tls-server-cert-missing")
    assert status_of(items, "tls-server-cert-missing") == {"fail", "pass"}   # cert missing, key present
    rc, out, err = run_virtdoctor("-c", TLS_URI, "fix", "--yes", "--unsafe", "--only", "tls-server-cert-missing")
    assert rc == 0, out + err
    assert "signed by the CA /etc/pki/CA/cacert.pem" in out
    assert Path("/etc/pki/CA/cacert.pem").read_bytes() == ca_before           # the CA was kept
    assert Path("/etc/pki/libvirt/clientcert.pem").read_bytes() == client_before

    proc, pids = listening_daemon()
    assert pids, proc.stderr
    conn = vmhelpers.open_with_timeout(TLS_URI, timeout=15)
    conn.close()


def test_expired_client_certificate_is_found(clean_pki, run_virtdoctor):
    """libvirt refuses its own expired certificate before any connection: 'The client
    certificate ... has expired'; virtdoctor says the same from the file."""
    import datetime as dt

    from virtdoctor.facts import tls as T

    rc, out, err = run_virtdoctor("-c", TLS_URI, "fix", "--yes", "--unsafe", "--only", "tls-ca-missing")
    assert rc == 0, out + err
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    ca = x509.load_pem_x509_certificate(Path(T.CA_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(T.CA_KEY_FILE).read_bytes(), None)
    old = T.issue(ca, ca_key, "old client", server=False, days=1,
                  now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10))
    Path(T.CLIENT_CERT).write_text(old.cert_pem)
    Path(T.CLIENT_KEY).write_text(old.key_pem)

    broken = virsh("uri")
    assert "The client certificate /etc/pki/libvirt/clientcert.pem has expired" in broken.stderr

    rc, items = findings(run_virtdoctor, "check", "--only", "tls-cert-invalid")
    bad = [f for f in items if f["status"] == "fail"]
    assert bad and "The client certificate /etc/pki/libvirt/clientcert.pem has expired" in bad[0]["message"]
