"""TLS checks on fake roots: certificates generated with `cryptography` for every case."""
from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from virtdoctor import engine, remedy
from virtdoctor.checks import tls as C
from virtdoctor.cli import main
from virtdoctor.facts import HostFacts, Proc
from virtdoctor.facts import tls as T
from virtdoctor.model import Status

LISTENING = [Proc(100, "libvirtd", ("libvirtd", "-d", "--listen"))]
NOT_LISTENING = [Proc(100, "libvirtd", ("libvirtd", "-d"))]


def facts_for(root, uri="qemu:///system", procs=NOT_LISTENING) -> HostFacts:
    return HostFacts(root=str(root), uri=uri, processes_override=list(procs))


def run(chk, facts):
    return engine.run_check(chk, facts)


def statuses(findings):
    return [f.status for f in findings]


def base(root, hostname="hv1"):
    root.write("/etc/hostname", hostname + "\n")
    root.write("/etc/hosts", f"127.0.0.1 localhost\n10.0.0.5 {hostname}.example.org {hostname}\n")
    root.passwd([("root", 0, 0, "/root", "/bin/bash")])
    root.group([("root", 0)])
    root.mkdir("/etc/libvirt")


def write_set(root, names=("hv1", "hv1.example.org", "localhost", "127.0.0.1"), *, ca=None, server_now=None,
              server_days=365, server_names=None, client=True):
    """A CA plus server and client certificates at libvirt's default paths; returns the CA."""
    if ca is None:
        ca_issued, ca_cert, ca_key = T.make_ca("test CA")
        root.write(T.CA_FILE, ca_issued.cert_pem)
        root.write(T.CA_KEY_FILE, ca_issued.key_pem, 0o600)
        ca = (ca_cert, ca_key)
    s = T.issue(*ca, "hv1.example.org", server=True, names=list(server_names or names), days=server_days,
                now=server_now)
    root.write(T.SERVER_CERT, s.cert_pem)
    root.write(T.SERVER_KEY, s.key_pem, 0o600)
    if client:
        c = T.issue(*ca, "client", server=False)
        root.write(T.CLIENT_CERT, c.cert_pem)
        root.write(T.CLIENT_KEY, c.key_pem, 0o600)
    return ca


# -- when TLS is in use --------------------------------------------------------------------
def test_tls_not_in_use_passes_every_check(fake_root):
    base(fake_root)
    f = facts_for(fake_root)
    for chk in (C.tls_ca_missing, C.tls_server_cert_missing, C.tls_client_cert_missing, C.tls_cert_invalid):
        out = run(chk, f)
        assert statuses(out) == [Status.PASS], out
        assert "not" in out[0].message


def test_listen_tls_off_in_conf_means_no_server_tls(fake_root):
    base(fake_root)
    fake_root.write("/etc/libvirt/libvirtd.conf", "# comment\nlisten_tls = 0\nlisten_tcp = 1\n")
    assert not T.tls_use(facts_for(fake_root, procs=LISTENING)).server


def test_listening_daemon_uses_its_config_file_from_the_command_line(fake_root):
    base(fake_root)
    fake_root.write("/srv/tls.conf", 'ca_file = "/srv/pki/ca.pem"\ncert_file = "/srv/pki/s.pem"\n'
                                     'key_file = "/srv/pki/k.pem"\n')
    procs = [Proc(7, "libvirtd", ("libvirtd", "-d", "-l", "-f", "/srv/tls.conf"))]
    f = facts_for(fake_root, procs=procs)
    sp = T.server_paths(f)
    assert (sp.ca, sp.cert, sp.key) == ("/srv/pki/ca.pem", "/srv/pki/s.pem", "/srv/pki/k.pem")
    out = run(C.tls_ca_missing, f)
    assert statuses(out) == [Status.FAIL]
    assert out[0].message.startswith("Cannot read CA certificate '/srv/pki/ca.pem': No such file or directory")


# -- missing files -------------------------------------------------------------------------
def test_tls_uri_without_ca_fails_with_libvirts_text(fake_root):
    base(fake_root)
    f = facts_for(fake_root, uri="qemu://hv1/system")
    out = run(C.tls_ca_missing, f)
    assert statuses(out) == [Status.FAIL]
    assert out[0].message == "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory"
    assert out[0].fix.auto.value == "unsafe"


def test_server_cert_and_key_missing_when_listening(fake_root):
    base(fake_root)
    fake_root.write(T.CA_FILE, T.make_ca("x")[0].cert_pem)
    out = run(C.tls_server_cert_missing, facts_for(fake_root, procs=LISTENING))
    assert [(f.status, f.message) for f in out] == [
        (Status.FAIL, "Cannot read certificate '/etc/pki/libvirt/servercert.pem': No such file or directory"),
        (Status.FAIL, "Cannot read private key '/etc/pki/libvirt/private/serverkey.pem': No such file or directory"),
    ]
    assert run(C.tls_ca_missing, facts_for(fake_root, procs=LISTENING))[0].status is Status.PASS


def test_client_cert_missing_for_remote_tls_uri(fake_root):
    base(fake_root)
    write_set(fake_root, client=False)
    f = facts_for(fake_root, uri="qemu+tls://other.example.org/system")
    out = run(C.tls_client_cert_missing, f)
    assert statuses(out) == [Status.FAIL, Status.FAIL]
    assert "Unable to read TLS confirmation: Input/output error" in out[0].message
    # the remote host's server side is not ours to check
    assert run(C.tls_server_cert_missing, f)[0].status is Status.PASS


def test_dangling_symlink_ca_is_missing_and_says_so(fake_root):
    base(fake_root)
    write_set(fake_root)
    os.unlink(fake_root.path(T.CA_FILE))
    fake_root.symlink(T.CA_FILE, "/etc/pki/CA/gone.pem")
    out = run(C.tls_ca_missing, facts_for(fake_root, uri="qemu://hv1/system"))
    assert statuses(out) == [Status.FAIL]
    assert "is a symlink to /etc/pki/CA/gone.pem, which does not exist" in out[0].message
    assert out[0].evidence["state"] == "dangling"


def test_per_user_pki_dir_for_non_root_client(fake_root):
    base(fake_root)
    fake_root.passwd([("root", 0, 0, "/root", "/bin/bash"), ("ann", 1000, 1000, "/home/ann", "/bin/bash")])
    fake_root.write("/home/ann/.pki/libvirt/clientcert.pem", "x")
    f = HostFacts(root=str(fake_root), uri="qemu+tls://far.example/system", processes_override=[], euid=1000)
    cp = T.client_paths(f, f.uri)
    assert cp.cert == "/home/ann/.pki/libvirt/clientcert.pem"   # per-user file present
    assert cp.key == T.CLIENT_KEY                                 # falls back file by file
    assert cp.ca == T.CA_FILE


def test_pkipath_uri_parameter(fake_root):
    base(fake_root)
    f = facts_for(fake_root, uri="qemu+tls://far.example/system?pkipath=/opt/pki")
    out = run(C.tls_ca_missing, f)
    assert out[0].message.startswith("Cannot read CA certificate '/opt/pki/cacert.pem'")


# -- invalid certificates ------------------------------------------------------------------
def test_valid_set_passes(fake_root):
    base(fake_root)
    write_set(fake_root)
    f = facts_for(fake_root, uri="qemu://localhost/system", procs=LISTENING)
    for chk in (C.tls_ca_missing, C.tls_server_cert_missing, C.tls_client_cert_missing, C.tls_cert_invalid):
        out = run(chk, f)
        assert all(x.status is Status.PASS for x in out), out


def test_not_pem_certificate(fake_root):
    base(fake_root)
    write_set(fake_root)
    fake_root.write(T.SERVER_CERT, b"\x30\x82\x01\x00 DER bytes, not PEM")
    out = run(C.tls_cert_invalid, facts_for(fake_root, procs=LISTENING))
    assert statuses(out) == [Status.FAIL]
    assert "is not a PEM certificate" in out[0].message
    # the missing-file check does not call a present file missing
    assert all(x.status is Status.PASS for x in run(C.tls_server_cert_missing, facts_for(fake_root, procs=LISTENING)))


def test_pem_block_that_is_not_a_certificate(fake_root):
    base(fake_root)
    write_set(fake_root)
    fake_root.write(T.CLIENT_CERT, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    out = run(C.tls_cert_invalid, facts_for(fake_root, uri="qemu://far.example/system"))
    assert statuses(out) == [Status.FAIL]
    assert "not a valid certificate" in out[0].message


def test_expired_server_certificate(fake_root):
    base(fake_root)
    write_set(fake_root, server_now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30), server_days=10)
    out = run(C.tls_cert_invalid, facts_for(fake_root, procs=LISTENING))
    assert statuses(out) == [Status.FAIL]
    assert "The server certificate /etc/pki/libvirt/servercert.pem has expired" in out[0].message
    assert "Failed to verify peer's certificate" in out[0].message


def test_not_yet_valid_certificate(fake_root):
    base(fake_root)
    write_set(fake_root, server_now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3))
    out = run(C.tls_cert_invalid, facts_for(fake_root, procs=LISTENING))
    assert "is not yet active" in out[0].message


def test_server_cert_signed_by_another_ca(fake_root):
    base(fake_root)
    write_set(fake_root)
    _, other_cert, other_key = T.make_ca("someone else's CA")
    s = T.issue(other_cert, other_key, "hv1", server=True, names=["hv1", "localhost"])
    fake_root.write(T.SERVER_CERT, s.cert_pem)
    fake_root.write(T.SERVER_KEY, s.key_pem, 0o600)
    out = run(C.tls_cert_invalid, facts_for(fake_root, procs=LISTENING))
    assert statuses(out) == [Status.FAIL]
    assert "Our own certificate /etc/pki/libvirt/servercert.pem failed validation against /etc/pki/CA/cacert.pem" \
        in out[0].message


def test_key_does_not_match_certificate(fake_root):
    base(fake_root)
    write_set(fake_root)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fake_root.write(T.CLIENT_KEY, other, 0o600)
    out = run(C.tls_cert_invalid, facts_for(fake_root, uri="qemu://far.example/system"))
    assert statuses(out) == [Status.FAIL]
    assert "does not belong to the certificate /etc/pki/libvirt/clientcert.pem" in out[0].message


def test_server_name_mismatch_for_uri_naming_this_host(fake_root):
    base(fake_root)
    write_set(fake_root, server_names=["hv1", "hv1.example.org"])   # no localhost
    out = run(C.tls_cert_invalid, facts_for(fake_root, uri="qemu://localhost/system", procs=LISTENING))
    bad = [x for x in out if x.status is Status.FAIL]
    assert len(bad) == 1
    assert "owner does not match the hostname localhost" in bad[0].message


def test_server_cert_naming_another_host_is_a_warning(fake_root):
    base(fake_root)
    write_set(fake_root, server_names=["elsewhere.example.com"])
    out = run(C.tls_cert_invalid, facts_for(fake_root, procs=LISTENING))
    assert statuses(out) == [Status.FAIL]
    assert out[0].severity.value == "warning"
    assert "not this host (hv1, hv1.example.org)" in out[0].message


def test_ca_without_ca_flag(fake_root):
    base(fake_root)
    ca_issued, ca_cert, ca_key = T.make_ca("real CA")
    leaf = T.issue(ca_cert, ca_key, "leaf", server=False)
    fake_root.write(T.CA_FILE, leaf.cert_pem)   # a leaf where the CA should be
    out = run(C.tls_cert_invalid, facts_for(fake_root, uri="qemu://far.example/system"))
    assert any("is not a CA certificate" in x.message for x in out)


@pytest.mark.parametrize("host, ok", [
    pytest.param("hv1", True, id="dns-san"),
    pytest.param("HV1.example.org.", True, id="case-and-trailing-dot"),
    pytest.param("127.0.0.1", True, id="ip-san"),
    pytest.param("10.0.0.5", False, id="ip-not-listed"),
    pytest.param("a.wild.test", True, id="wildcard"),
    pytest.param("a.b.wild.test", False, id="wildcard-one-label-only"),
])
def test_name_matching(host, ok):
    _, ca_cert, ca_key = T.make_ca("ca")
    pem = T.issue(ca_cert, ca_key, "cn-not-used", server=True,
                  names=["hv1", "hv1.example.org", "127.0.0.1", "*.wild.test"]).cert_pem
    info = T.cert_info(x509.load_pem_x509_certificate(pem.encode()))
    assert T.name_matches(info, host) is ok


# -- the fix ---------------------------------------------------------------------------------
def _verify_chain(root, server_names, fresh_dirs=True):
    ca = x509.load_pem_x509_certificate(root.path(T.CA_FILE).read_bytes())
    for cert_path, key_path in ((T.SERVER_CERT, T.SERVER_KEY), (T.CLIENT_CERT, T.CLIENT_KEY)):
        cert = x509.load_pem_x509_certificate(root.path(cert_path).read_bytes())
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(root.path(key_path).read_bytes(), None)
        assert T.key_matches(cert, key)
        assert stat.S_IMODE(os.stat(root.path(key_path)).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(root.path(cert_path)).st_mode) == 0o644
    server = T.cert_info(x509.load_pem_x509_certificate(root.path(T.SERVER_CERT).read_bytes()))
    for n in server_names:
        assert T.name_matches(server, n), (n, server.names())
    if fresh_dirs:  # directories the fix created are private
        assert stat.S_IMODE(os.stat(root.path("/etc/pki/libvirt/private")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root.path(T.CA_KEY_FILE)).st_mode) == 0o600


def test_fix_creates_ca_server_and_client_set(fake_root, tmp_path):
    base(fake_root)
    f = facts_for(fake_root, uri="qemu://localhost/system")
    finding = run(C.tls_ca_missing, f)[0]
    p = finding.plan
    assert p.auto.value == "unsafe"
    assert any("--listen" in n for n in p.notes)

    def recheck():
        out = run(C.tls_ca_missing, facts_for(fake_root, uri="qemu://localhost/system"))
        return all(x.status is Status.PASS for x in out), ""

    out = remedy.apply_plan(p, remedy.Env(root=str(fake_root), accounts=f.accounts), "tls-ca-missing", "host",
                            recheck, str(tmp_path / "backups"))
    assert out.status == "fixed", out.detail
    _verify_chain(fake_root, ["hv1", "hv1.example.org", "localhost", "127.0.0.1"])
    after = facts_for(fake_root, uri="qemu://localhost/system", procs=LISTENING)
    for chk in (C.tls_ca_missing, C.tls_server_cert_missing, C.tls_client_cert_missing, C.tls_cert_invalid):
        assert all(x.status is Status.PASS for x in run(chk, after)), chk.slug


def test_all_plans_of_one_run_write_the_same_material(fake_root):
    base(fake_root)
    f = facts_for(fake_root, uri="qemu://localhost/system")
    a = run(C.tls_ca_missing, f)[0].plan
    b = run(C.tls_client_cert_missing, f)[0].plan
    text = {x.path: x.content for x in a.actions if hasattr(x, "content")}
    assert text == {x.path: x.content for x in b.actions if hasattr(x, "content")}


def test_fix_with_existing_ca_and_key_issues_only_the_missing_cert(fake_root):
    base(fake_root)
    write_set(fake_root)
    before_ca = fake_root.read(T.CA_FILE)
    before_client = fake_root.read(T.CLIENT_CERT)
    os.unlink(fake_root.path(T.SERVER_CERT))
    os.unlink(fake_root.path(T.SERVER_KEY))
    f = facts_for(fake_root, procs=LISTENING)
    p = run(C.tls_server_cert_missing, f)[0].plan
    assert sorted(a.path for a in p.actions) == sorted([T.SERVER_CERT, T.SERVER_KEY])
    env = remedy.Env(root=str(fake_root), accounts=f.accounts)
    for a in p.actions:
        a.apply(env)
    assert fake_root.read(T.CA_FILE) == before_ca and fake_root.read(T.CLIENT_CERT) == before_client
    _verify_chain(fake_root, ["hv1", "localhost"], fresh_dirs=False)


def test_fix_without_the_ca_key_is_manual(fake_root):
    base(fake_root)
    write_set(fake_root)
    os.unlink(fake_root.path(T.CA_KEY_FILE))
    os.unlink(fake_root.path(T.SERVER_CERT))
    f = facts_for(fake_root, procs=LISTENING)
    p = run(C.tls_server_cert_missing, f)[0].plan
    assert p.auto.value == "manual" and not p.actions


def test_fix_through_the_cli_on_a_fake_root(fake_root, tmp_path, capsys):
    base(fake_root)
    rc = main(["--root", str(fake_root), "-c", "qemu://localhost/system", "fix", "--yes",
               "--only", "tls-ca-missing", "--backup-dir", str(tmp_path / "b")])
    assert rc == 1                                  # unsafe: held back without --unsafe
    assert not fake_root.path(T.CA_FILE).exists()
    assert "needs --unsafe" in capsys.readouterr().out
    rc = main(["--root", str(fake_root), "-c", "qemu://localhost/system", "fix", "--yes", "--unsafe",
               "--only", "tls-ca-missing", "tls-client-cert-missing", "--backup-dir", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fixed" in out
    _verify_chain(fake_root, ["hv1", "localhost", "127.0.0.1"])
