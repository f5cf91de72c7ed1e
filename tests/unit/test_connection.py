"""Connection checks on fake roots: non-root access, URIs that mean TLS, remote listening."""
from __future__ import annotations

import os
import socket

import pytest

from virtdoctor import engine
from virtdoctor.checks import connection as C
from virtdoctor.facts import HostFacts, Proc
from virtdoctor.model import Status

POLKIT_RULE = """// Allow any user in the 'libvirt' group to connect to system libvirtd
// without entering a password.

polkit.addRule(function(action, subject) {
    if (action.id == "org.libvirt.unix.manage" &&
        subject.isInGroup("libvirt")) {
        return polkit.Result.YES;
    }
});
"""
LIBVIRTD = Proc(10, "libvirtd", ("/usr/sbin/libvirtd", "-d"))
LISTENING = Proc(10, "libvirtd", ("/usr/sbin/libvirtd", "-d", "--listen"))


def UserFacts(**kw):
    """Facts as seen by uid 1000 (ann) instead of whoever runs the tests."""
    return HostFacts(euid=1000, **kw)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("SUDO_USER", "LIBVIRT_DEFAULT_URI"):
        monkeypatch.delenv(name, raising=False)


def host(root, *, members=("ann",), polkit=True, dbus=True, sock_mode=0o777, sock_gid=0):
    root.passwd([("root", 0, 0, "/root", "/bin/bash"), ("ann", 1000, 1000, "/home/ann", "/bin/bash"),
                 ("bob", 1001, 1001, "/home/bob", "/bin/bash")])
    root.group([("root", 0), ("ann", 1000), ("bob", 1001), ("libvirt", 111, list(members))])
    root.write("/etc/hostname", "hv1\n")
    root.mkdir("/etc/libvirt/qemu")
    root.mkdir("/run/libvirt")
    if polkit:
        root.write(C.POLKIT_LIBVIRT_POLICY, "<policyconfig/>")
        root.write("/usr/share/polkit-1/rules.d/60-libvirt.rules", POLKIT_RULE)
    if dbus:
        root.write(C.DBUS_SOCKET, "")
    root.write("/run/libvirt/libvirt-sock", "", sock_mode)
    root.chown("/run/libvirt/libvirt-sock", 0, sock_gid)  # the stat overlay: no root needed


def facts_for(root, cls=HostFacts, uri="qemu:///system", procs=(LIBVIRTD,)):
    kw = {"euid": 0} if cls is HostFacts else {}  # root's view unless the test says whose
    return cls(root=str(root), uri=uri, processes_override=list(procs), stat_overlay=root.stat_table, **kw)


def results(chk, facts):
    return engine.run_check(chk, facts)


# -- non-root-access ---------------------------------------------------------------------------
def test_user_in_libvirt_group_with_polkit_rule(fake_root):
    host(fake_root)
    out = results(C.non_root_access, facts_for(fake_root, UserFacts))
    assert [f.status for f in out] == [Status.PASS]
    assert "polkit rule" in out[0].message


def test_user_not_in_group_gets_polkit_error(fake_root):
    host(fake_root, members=())
    out = results(C.non_root_access, facts_for(fake_root, UserFacts))
    assert out[0].status is Status.FAIL
    assert ("authentication unavailable: no polkit agent available to authenticate action "
            "'org.libvirt.unix.manage'") in out[0].message
    assert out[0].fix.commands == ("usermod -a -G libvirt ann",)


def test_no_dbus_breaks_polkit(fake_root):
    host(fake_root, dbus=False)
    out = results(C.non_root_access, facts_for(fake_root, UserFacts))
    assert out[0].status is Status.FAIL
    assert "Unable to get system bus connection: Could not connect: No such file or directory" in out[0].message


def test_socket_group_and_perms_without_polkit(fake_root):
    host(fake_root, polkit=False, sock_mode=0o770, sock_gid=111, members=())
    fake_root.write("/etc/libvirt/libvirtd.conf", '# hardened\nunix_sock_group = "libvirt"\n'
                                                  'unix_sock_rw_perms = "0770"\nauth_unix_rw = "none"\n')
    out = results(C.non_root_access, facts_for(fake_root, UserFacts))
    assert out[0].status is Status.FAIL
    assert "Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied" in out[0].message
    assert out[0].fix.commands == ("usermod -a -G libvirt ann",)
    host(fake_root, polkit=False, sock_mode=0o770, sock_gid=111, members=("ann",))
    out = results(C.non_root_access, facts_for(fake_root, UserFacts))
    assert out[0].status is Status.PASS


def test_socket_absent_judged_from_conf(fake_root):
    host(fake_root, polkit=False, members=())
    os.unlink(fake_root.path("/run/libvirt/libvirt-sock"))
    fake_root.write("/etc/libvirt/libvirtd.conf", 'unix_sock_group = "libvirt"\nunix_sock_rw_perms = "0770"\n'
                                                  'auth_unix_rw = "none"\n')
    assert results(C.non_root_access, facts_for(fake_root, UserFacts))[0].status is Status.FAIL


def test_session_uri_hides_system_vms(fake_root):
    host(fake_root)
    fake_root.write("/etc/libvirt/qemu/web.xml", "<domain/>")
    out = results(C.non_root_access, facts_for(fake_root, UserFacts, uri="qemu:///session"))
    assert out[0].status is Status.FAIL
    assert "export LIBVIRT_DEFAULT_URI=qemu:///system" in out[0].message


def test_root_judges_sudo_user_and_group_members(fake_root, monkeypatch):
    host(fake_root, members=("ann",))
    monkeypatch.setenv("SUDO_USER", "bob")
    out = results(C.non_root_access, facts_for(fake_root))
    by_user = {f.evidence["user"]: f for f in out}
    assert by_user["bob"].status is Status.FAIL and by_user["bob"].evidence["why"] == "SUDO_USER"
    assert by_user["ann"].status is Status.PASS


def test_root_without_users_passes(fake_root):
    host(fake_root, members=())
    out = results(C.non_root_access, facts_for(fake_root))
    assert [f.status for f in out] == [Status.PASS] and "no normal user" in out[0].message


def test_unsearchable_run_dir(fake_root):
    host(fake_root)
    os.chmod(fake_root.path("/run/libvirt"), 0o700)
    out = results(C.non_root_access, facts_for(fake_root, UserFacts))
    assert out[0].status is Status.FAIL and "not searchable" in out[0].message


# -- uri-implies-tls ---------------------------------------------------------------------------
@pytest.mark.parametrize("uri, status, text", [
    pytest.param("qemu:///system", Status.PASS, "local socket", id="local"),
    pytest.param("qemu+ssh://hv2/system", Status.PASS, "ssh", id="ssh"),
    pytest.param("qemu+tls://hv2/system", Status.PASS, "explicitly", id="explicit-tls"),
    pytest.param("qemu://localhost/system", Status.FAIL, "for the local daemon use qemu:///system", id="localhost"),
    pytest.param("qemu://hv1/system", Status.FAIL, "names this host", id="own-hostname"),
    pytest.param("qemu://hv2.example/system", Status.FAIL, "use qemu+ssh://hv2.example/system", id="remote-no-ca"),
])
def test_uri_implies_tls(fake_root, uri, status, text):
    host(fake_root)
    out = results(C.uri_implies_tls, facts_for(fake_root, uri=uri))
    assert out[0].status is status and text in out[0].message
    assert out[0].subject == f"uri:{uri}"
    if status is Status.FAIL:
        assert "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory" in out[0].message


def test_remote_tls_uri_with_ca_passes(fake_root):
    host(fake_root)
    fake_root.write("/etc/pki/CA/cacert.pem", "x")
    out = results(C.uri_implies_tls, facts_for(fake_root, uri="qemu://hv2.example/system"))
    assert out[0].status is Status.PASS


def test_uri_alias_resolves_to_tls(fake_root):
    host(fake_root)
    fake_root.write("/etc/libvirt/libvirt.conf", '# aliases\nuri_aliases = [\n  "hv=qemu://localhost/system",\n'
                                                 '  "remote1=qemu+ssh://root@192.168.93.201/system",\n]\n')
    out = results(C.uri_implies_tls, facts_for(fake_root, uri="hv"))
    assert out[0].status is Status.FAIL and out[0].evidence["alias"] == "hv"


# -- tcp-listen-disabled -------------------------------------------------------------------------
def test_local_only_daemon_passes(fake_root):
    host(fake_root)
    out = results(C.tcp_listen_disabled, facts_for(fake_root))
    assert out[0].status is Status.PASS and "only on its local socket" in out[0].message


def test_tls_uri_to_this_host_without_listen(fake_root):
    host(fake_root)
    out = results(C.tcp_listen_disabled, facts_for(fake_root, uri="qemu://localhost/system"))
    assert out[0].status is Status.FAIL
    assert "without --listen" in out[0].message
    assert "unable to connect to server at 'localhost:16514': Connection refused" in out[0].message


def test_tcp_uri_with_listen_but_listen_tcp_off(fake_root):
    host(fake_root)
    out = results(C.tcp_listen_disabled, facts_for(fake_root, uri="qemu+tcp://hv1/system", procs=(LISTENING,)))
    assert out[0].status is Status.FAIL and "listen_tcp = 0" in out[0].message
    fake_root.write("/etc/libvirt/libvirtd.conf", "listen_tcp = 1\ntcp_port = \"16600\"\n")
    out = results(C.tcp_listen_disabled, facts_for(fake_root, uri="qemu+tcp://hv1/system", procs=(LISTENING,)))
    assert out[0].status is Status.PASS and "16600" in out[0].message


def test_configured_but_nothing_listens_per_proc_net_tcp(fake_root):
    host(fake_root)
    # 0100007F:4084 = 127.0.0.1:16516 listening (0A); 16514 is not
    fake_root.write("/proc/net/tcp", "  sl  local_address rem_address   st\n"
                                     "   0: 0100007F:4084 00000000:0000 0A 0 0 0\n")
    out = results(C.tcp_listen_disabled, facts_for(fake_root, uri="qemu://localhost/system", procs=(LISTENING,)))
    assert out[0].status is Status.FAIL and "nothing listens on port 16514" in out[0].message
    fake_root.write("/proc/net/tcp", "  sl  local_address rem_address   st\n"
                                     "   0: 00000000:4082 00000000:0000 0A 0 0 0\n")
    out = results(C.tcp_listen_disabled, facts_for(fake_root, uri="qemu://localhost/system", procs=(LISTENING,)))
    assert out[0].status is Status.PASS


def test_listen_tls_set_but_no_listen_flag_warns(fake_root):
    host(fake_root)
    fake_root.write("/etc/libvirt/libvirtd.conf", "# enable TLS\nlisten_tls = 1\n")
    out = results(C.tcp_listen_disabled, facts_for(fake_root))
    assert out[0].status is Status.FAIL and "ignored" in out[0].message


def test_systemd_tls_socket_counts_as_listening(fake_root):
    host(fake_root)
    fake_root.write("/etc/systemd/system/sockets.target.wants/libvirtd-tls.socket", "")
    out = results(C.tcp_listen_disabled, facts_for(fake_root, uri="qemu://localhost/system"))
    assert out[0].status is Status.PASS


def test_other_host_is_skipped(fake_root):
    host(fake_root)
    out = results(C.tcp_listen_disabled, facts_for(fake_root, uri="qemu+tcp://far.example/system"))
    assert out[0].status is Status.SKIP
