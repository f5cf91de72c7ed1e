"""Daemon checks on fake roots: socket and process, log directory, QEMU's account, D-Bus."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading

import pytest

from virtdoctor import engine, remedy
from virtdoctor.checks import daemon as D
from virtdoctor.cli import main
from virtdoctor.facts import HostFacts, Proc
from virtdoctor.facts.libvirt import RecordedLibvirt
from virtdoctor.model import Status

LIBVIRTD = Proc(4242, "libvirtd", ("libvirtd", "-d"))

DEBIAN_QEMU_CONF = """\
# Master configuration file for the QEMU driver.
#
# The user for QEMU processes run by the system instance. It can be
# specified as a user name or as a user id. The qemu driver will try to
# parse this value first as a name and then, if the name doesn't exist,
# as a user id.
#
#       user = "qemu"   # A user named "qemu"
#       user = "+0"     # Super-user (uid=0)
#       user = "100"    # A user named "100" or a user with uid=100
#
#user = "libvirt-qemu"

# The group for QEMU processes run by the system instance.
#group = "libvirt-qemu"

# x86_64 and aarch64 firmware (libvirt allows no comment inside a list)
nvram = [
   "/usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd",
   "/usr/share/AAVMF/AAVMF_CODE.fd:/usr/share/AAVMF/AAVMF_VARS.fd"
]
"""


def host(root, *, users=True, qemu_conf=DEBIAN_QEMU_CONF):
    root.mkdir("/etc/libvirt")
    if users:
        root.passwd([("root", 0, 0, "/root", "/bin/bash"), ("libvirt-qemu", 64055, 107),
                     ("qemu", 107, 107)])
        root.group([("root", 0), ("kvm", 107, ["libvirt-qemu"]), ("libvirt-qemu", 64055), ("libvirt", 111)])
    if qemu_conf is not None:
        root.write("/etc/libvirt/qemu.conf", qemu_conf)


def facts_for(root, procs=(LIBVIRTD,), uri="qemu:///system", error=None) -> HostFacts:
    return HostFacts(root=str(root), uri=uri, processes_override=list(procs),
                     libvirt_facts=RecordedLibvirt(error=error))


def one(chk, facts):
    out = engine.run_check(chk, facts)
    assert len(out) == 1, out
    return out[0]


# -- daemon-socket-missing ---------------------------------------------------------------------
def test_socket_healthy(fake_root):
    host(fake_root)
    fake_root.write("/run/libvirt/libvirt-sock")
    f = one(D.daemon_socket_missing, facts_for(fake_root))
    assert f.status is Status.PASS and f.evidence["mode"] == "monolithic"


def test_socket_missing_and_no_daemon(fake_root):
    host(fake_root)
    f = one(D.daemon_socket_missing, facts_for(fake_root, procs=()))
    assert f.status is Status.FAIL
    assert "Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory" in f.message
    assert f.fix.auto.value == "safe"


def test_socket_modular_mode(fake_root):
    host(fake_root)
    fake_root.write("/run/libvirt/virtqemud-sock")
    f = one(D.daemon_socket_missing, facts_for(fake_root, procs=[Proc(9, "virtqemud", ("virtqemud",))]))
    assert f.status is Status.PASS and f.evidence["daemon"] == "virtqemud"


def test_stale_socket(fake_root):
    host(fake_root)
    fake_root.write("/run/libvirt/libvirt-sock")
    f = one(D.daemon_socket_missing, facts_for(fake_root, procs=()))
    assert f.status is Status.FAIL and "Connection refused" in f.message


def test_session_uri_is_skipped(fake_root):
    host(fake_root)
    assert one(D.daemon_socket_missing, facts_for(fake_root, uri="qemu:///session")).status is Status.SKIP


# -- daemon-log-dir-missing ------------------------------------------------------------------------
def test_log_dir_missing_and_fix(fake_root, tmp_path):
    host(fake_root)
    f = one(D.daemon_log_dir_missing, facts_for(fake_root))
    assert f.status is Status.FAIL and "/var/log/libvirt" in f.message
    rc = main(["--root", str(fake_root), "--offline", "fix", "--yes", "--only", "daemon-log-dir-missing",
               "--backup-dir", str(tmp_path / "b")])
    assert rc == 0
    assert oct(os.stat(fake_root.path("/var/log/libvirt")).st_mode & 0o777) == "0o700"
    assert fake_root.path("/var/log/libvirt/qemu").is_dir()


def test_log_outputs_in_conf(fake_root):
    host(fake_root)
    fake_root.write("/etc/libvirt/libvirtd.conf", 'log_outputs = "3:file:/srv/logs/libvirtd.log 1:stderr"\n')
    fake_root.mkdir("/var/log/libvirt/qemu")
    f = one(D.daemon_log_dir_missing, facts_for(fake_root))
    assert f.status is Status.FAIL and f.evidence["missing"] == ["/srv/logs"]


# -- qemu-user-missing -----------------------------------------------------------------------------
def test_qemu_user_builtin_default_exists(fake_root):
    host(fake_root)
    f = one(D.qemu_user_missing, facts_for(fake_root))
    assert f.status is Status.PASS
    assert f.evidence["source"] == "built-in default" and f.evidence["user"] == "libvirt-qemu"


def test_qemu_user_from_conf_with_lists_and_comments(fake_root):
    host(fake_root, qemu_conf=DEBIAN_QEMU_CONF + 'user = "qemu"   # the RHEL account\ngroup = "kvm"\n')
    f = one(D.qemu_user_missing, facts_for(fake_root))
    assert f.status is Status.PASS and (f.evidence["user"], f.evidence["group"]) == ("qemu", "kvm")


def test_qemu_user_missing_from_conf(fake_root):
    host(fake_root, qemu_conf=DEBIAN_QEMU_CONF + 'user = "vdtest-nouser"\n')
    f = one(D.qemu_user_missing, facts_for(fake_root))
    assert f.status is Status.FAIL
    assert "invalid argument: Failed to parse user 'vdtest-nouser'" in f.message
    assert f.fix.auto.value == "unsafe"


def test_builtin_default_account_missing(fake_root):
    host(fake_root, users=False)
    fake_root.passwd([("root", 0, 0)])
    fake_root.group([("root", 0)])
    f = one(D.qemu_user_missing, facts_for(fake_root))
    assert f.status is Status.FAIL and "Failed to parse user 'libvirt-qemu'" in f.message
    # nothing to point at: the fix is advice to create the account
    p = f.plan
    assert p.auto.value == "manual" and "useradd" in p.commands[0]


def test_qemu_group_missing(fake_root):
    host(fake_root, qemu_conf='group = "nogroup-here"\n')
    f = one(D.qemu_user_missing, facts_for(fake_root))
    assert f.status is Status.FAIL and "Failed to parse group 'nogroup-here'" in f.message


def test_numeric_user(fake_root):
    host(fake_root, qemu_conf='user = "+0"\ngroup = "+0"\n')
    assert one(D.qemu_user_missing, facts_for(fake_root)).status is Status.PASS


def test_qemu_conf_syntax_error_names_file_and_line(fake_root):
    host(fake_root, qemu_conf='# ok\nuser = "qemu"\ngroup = "kvm\nnvram = [\n')
    f = one(D.qemu_user_missing, facts_for(fake_root))
    assert f.status is Status.FAIL
    assert "syntax error at /etc/libvirt/qemu.conf:3" in f.message
    assert f.evidence["line"] == 3
    p = f.plan
    assert p.auto.value == "manual"


def test_no_libvirt_installed_skips(fake_root):
    fake_root.passwd([("root", 0, 0)])
    assert one(D.qemu_user_missing, facts_for(fake_root, procs=())).status is Status.SKIP


def _fake_daemon_runner(root):
    """Stands in for `libvirtd -d` on a fake root: binds the socket the action waits for."""
    calls, servers = [], []

    def run(argv):
        calls.append(argv)
        if argv == ["libvirtd", "-d"]:
            path = root.path("/run/libvirt/libvirt-sock")
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                path.unlink()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(path))
            s.listen(4)
            servers.append(s)
        return subprocess.CompletedProcess(argv, 0, "", "")

    return run, calls, servers


def test_qemu_user_fix_sets_conf_keeps_comments_and_starts_daemon(fake_root, tmp_path):
    host(fake_root, qemu_conf=DEBIAN_QEMU_CONF + 'user = "vdtest-nouser"   # broken on purpose\n')
    facts = facts_for(fake_root, procs=())          # the daemon died on the bad user
    finding = one(D.qemu_user_missing, facts)
    p = finding.plan
    assert p.auto.value == "unsafe"
    assert p.commands[0] == 'set user = "libvirt-qemu" in /etc/libvirt/qemu.conf'
    assert p.commands[-1] == "libvirtd -d"
    assert any("not running and is started" in n for n in p.notes)
    run, calls, servers = _fake_daemon_runner(fake_root)
    env = remedy.Env(root=str(fake_root), accounts=facts.accounts, run=run)
    diff = p.diff(env)
    assert '-user = "vdtest-nouser"' in diff and '+user = "libvirt-qemu"' in diff

    def recheck():
        r = one(D.qemu_user_missing, facts_for(fake_root))
        return r.status is Status.PASS, r.message

    try:
        out = remedy.apply_plan(p, env, "qemu-user-missing", "host", recheck, str(tmp_path / "b"))
    finally:
        for s in servers:
            s.close()
    assert out.status == "fixed", out.detail
    assert calls == [["libvirtd", "-d"]]
    text = fake_root.read("/etc/libvirt/qemu.conf")
    assert text.startswith(DEBIAN_QEMU_CONF)             # comments and lists untouched
    assert 'user = "libvirt-qemu"' in text and 'group = "libvirt-qemu"' in text


def test_qemu_user_fix_rolls_back_when_the_daemon_does_not_come_up(fake_root, tmp_path):
    original = DEBIAN_QEMU_CONF + 'user = "vdtest-nouser"\n'
    host(fake_root, qemu_conf=original)
    facts = facts_for(fake_root, procs=())
    p = one(D.qemu_user_missing, facts).plan
    p = dataclasses.replace(p, actions=tuple(dataclasses.replace(a, wait_seconds=0.3)
                                             if isinstance(a, remedy.RestartDaemon) else a for a in p.actions))
    env = remedy.Env(root=str(fake_root), accounts=facts.accounts,
                     run=lambda argv: subprocess.CompletedProcess(argv, 0, "", ""))
    out = remedy.apply_plan(p, env, "qemu-user-missing", "host", lambda: (True, ""), str(tmp_path / "b"))
    assert out.status == "rolled-back" and "did not answer" in out.detail
    assert fake_root.read("/etc/libvirt/qemu.conf") == original


def test_restart_plan_names_running_pid(fake_root):
    host(fake_root, qemu_conf='user = "ghost"\n')
    facts = facts_for(fake_root)
    p = one(D.qemu_user_missing, facts).plan
    assert p.commands[-1] == "kill 4242 && libvirtd -d"
    assert any("restarted (pid 4242)" in n for n in p.notes)


def test_restart_refuses_to_kill_live_pids_for_a_fake_root(fake_root):
    env = remedy.Env(root=str(fake_root), run=lambda argv: subprocess.CompletedProcess(argv, 0, "", ""))
    with pytest.raises(remedy.ActionError):
        remedy.RestartDaemon("libvirtd", [os.getpid()], "/run/libvirt/libvirt-sock").apply(env)


# -- dbus-unavailable -----------------------------------------------------------------------------
def test_dbus_socket_missing(fake_root):
    host(fake_root)
    f = one(D.dbus_unavailable, facts_for(fake_root))
    assert f.status is Status.FAIL and f.severity.value == "warning"
    assert "Unable to get system bus connection" in f.message
    assert f.fix.auto.value == "manual"


def test_dbus_socket_present(fake_root):
    host(fake_root)
    path = fake_root.path("/run/dbus/system_bus_socket")
    path.parent.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    try:
        f = one(D.dbus_unavailable, facts_for(fake_root, procs=[LIBVIRTD, Proc(5, "dbus-daemon", ())]))
    finally:
        s.close()
    assert f.status is Status.PASS


def test_dbus_path_not_a_socket(fake_root):
    host(fake_root)
    fake_root.write("/run/dbus/system_bus_socket", "")
    assert "is not a socket" in one(D.dbus_unavailable, facts_for(fake_root)).message


def test_config_syntax_error_names_file_line_and_libvirts_message(fake_root):
    """libvirtd says "Can't load config file: configuration file syntax error:
    /etc/libvirt/libvirtd.conf:2: expecting a value" and exits; the check says
    the same before anyone restarts it."""
    from virtdoctor.checks.daemon import config_syntax_error
    from virtdoctor.engine import run_check
    from virtdoctor.facts import HostFacts

    fake_root.write("/etc/libvirt/qemu.conf", '#user = "libvirt-qemu"\nuser = "libvirt-qemu"\n')
    fake_root.write("/etc/libvirt/libvirtd.conf", "listen_tls = 0\nlog_level = \n")
    facts = HostFacts(root=str(fake_root), offline=True)
    [f] = run_check(config_syntax_error, facts)
    assert f.status.value == "fail" and f.severity.value == "error"
    assert "configuration file syntax error: /etc/libvirt/libvirtd.conf:2: expecting a value" in f.message
    assert f.evidence["checked"] == ["/etc/libvirt/qemu.conf"]
    assert f.fix.auto.value == "manual" and "sed -n 1,4p /etc/libvirt/libvirtd.conf" in f.fix.commands

    fake_root.write("/etc/libvirt/libvirtd.conf", "listen_tls = 0\nlog_level = 1\n")
    [f] = run_check(config_syntax_error, HostFacts(root=str(fake_root), offline=True))
    assert f.status.value == "pass" and len(f.evidence["checked"]) == 2


def test_config_syntax_error_skips_without_config_files(fake_root):
    from virtdoctor.checks.daemon import config_syntax_error
    from virtdoctor.engine import run_check
    from virtdoctor.facts import HostFacts

    fake_root.mkdir("/etc/libvirt")
    [f] = run_check(config_syntax_error, HostFacts(root=str(fake_root), offline=True))
    assert f.status.value == "skip"


def test_log_dir_fix_starts_the_daemon_again_with_its_configured_arguments(fake_root):
    host(fake_root)
    fake_root.write("/usr/sbin/libvirtd", "#!/bin/sh\n", 0o755)
    fake_root.write("/usr/sbin/virtlogd", "#!/bin/sh\n", 0o755)
    fake_root.write("/etc/default/libvirtd", 'LIBVIRTD_ARGS="--listen"\n')
    f = one(D.daemon_log_dir_missing, facts_for(fake_root, procs=()))
    assert f.status is Status.FAIL
    assert f.fix.commands == ("mkdir -p -m 0700 /var/log/libvirt", "mkdir -p -m 0700 /var/log/libvirt/qemu",
                              "virtlogd -d", "/usr/sbin/libvirtd --listen -d")
    assert f.plan.actions[-1].socket == "/run/libvirt/libvirt-sock"  # waits until it answers
    # a running daemon is left alone
    f2 = one(D.daemon_log_dir_missing, facts_for(fake_root))
    assert f2.fix.commands == ("mkdir -p -m 0700 /var/log/libvirt", "mkdir -p -m 0700 /var/log/libvirt/qemu")
