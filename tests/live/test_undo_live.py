"""Live: every applied fix can be undone. Break /dev/kvm (mode 0600), let virtdoctor fix it,
list the backup, `fix --undo` it: the node is exactly as broken as before (mode, owner, group,
ACL; the udev rule as it was) and the check fails again; then fix it again and start a KVM
guest. And the default network: stop it, fix, undo (stopped again), fix."""
from __future__ import annotations

import json
import os
import stat

import libvirt
import pytest

from vmhelpers import start_and_prove

UDEV_RULE = "/etc/udev/rules.d/65-kvm.rules"
ACL = "system.posix_acl_access"


def node_state(path):
    st = os.lstat(path)
    try:
        acl = os.getxattr(path, ACL)
    except OSError:
        acl = None
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, acl


def rule_state():
    return open(UDEV_RULE).read() if os.path.exists(UDEV_RULE) else None


def status_of(run_virtdoctor, slug):
    rc, out, err = run_virtdoctor("--format", "json", "check", "--only", slug)
    return {f["id"]: f for f in json.loads(out)["findings"]}[slug]["status"]


@pytest.mark.needs_kvm
def test_kvm_fix_undo_restores_the_broken_state_exactly_then_fix_again(file_guard, vm_xml, define_vm,
                                                                       run_virtdoctor, tmp_path):
    file_guard("/dev/kvm")
    file_guard(UDEV_RULE)
    file_guard("/etc/udev/rules.d")
    backups = str(tmp_path / "backups")
    os.chmod("/dev/kvm", 0o600)
    broken, broken_rule = node_state("/dev/kvm"), rule_state()
    assert status_of(run_virtdoctor, "kvm-device-permission") == "fail"

    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--only", "kvm-device-permission",
                                  "--backup-dir", backups)
    (act,) = json.loads(out)["actions"]
    assert rc == 0 and act["status"] == "fixed", out + err
    assert node_state("/dev/kvm")[0] == 0o660

    rc, out, err = run_virtdoctor("--format", "json", "fix", "--list-backups", "--backup-dir", backups)
    (b,) = json.loads(out)["backups"]
    assert b["id"] == "kvm-device-permission" and b["state"] == "fixed" and "chmod 0660 /dev/kvm" in b["actions"]

    rc, out, err = run_virtdoctor("fix", "--undo", b["name"], "--backup-dir", backups)
    assert rc == 0, out + err
    assert node_state("/dev/kvm") == broken and rule_state() == broken_rule
    assert status_of(run_virtdoctor, "kvm-device-permission") == "fail"
    rc, out, err = run_virtdoctor("fix", "--undo", b["name"], "--backup-dir", backups)
    assert rc == 3 and "already undone" in err

    rc, out, err = run_virtdoctor("fix", "--yes", "--only", "kvm-device-permission", "--backup-dir", backups)
    assert rc == 0, out + err
    assert node_state("/dev/kvm")[0] == 0o660
    dom = define_vm(vm_xml("vdtest-undo-kvm", virt_type="kvm"))
    assert start_and_prove(dom).virt_type == "kvm"


def test_default_network_fix_undo_then_fix_again(libvirt_conn, run_virtdoctor, tmp_path):
    net = libvirt_conn.networkLookupByName("default")
    was_active, was_auto = bool(net.isActive()), bool(net.autostart())
    backups = str(tmp_path / "backups")
    try:
        if net.isActive():
            net.destroy()
        net.setAutostart(0)
        assert status_of(run_virtdoctor, "default-network-inactive") == "fail"
        rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--only", "default-network-inactive",
                                      "--backup-dir", backups)
        acts = [a for a in json.loads(out)["actions"] if a["subject"] == "host"]
        assert acts and acts[0]["status"] == "fixed", out + err
        assert net.isActive() and net.autostart()
        rc, out, err = run_virtdoctor("--format", "json", "fix", "--list-backups", "--backup-dir", backups)
        name = next(b["name"] for b in json.loads(out)["backups"] if b["id"] == "default-network-inactive")
        rc, out, err = run_virtdoctor("--format", "json", "fix", "--undo", name, "--backup-dir", backups)
        assert rc == 0, out + err
        assert json.loads(out)["undo"]["status"] == "undone"
        assert not net.isActive() and not net.autostart()
        rc, out, err = run_virtdoctor("fix", "--yes", "--only", "default-network-inactive", "--backup-dir", backups)
        assert rc == 0, out + err
        assert net.isActive() and net.autostart()
    finally:
        try:
            if was_active and not net.isActive():
                net.create()
            elif not was_active and net.isActive():
                net.destroy()
            net.setAutostart(1 if was_auto else 0)
        except libvirt.libvirtError:
            pass
