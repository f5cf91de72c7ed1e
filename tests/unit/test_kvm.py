"""KVM checks on fake roots: the device node, who may open it, and hardware virtualisation
decided by the probe (injected KvmProbe), never by CPU flags alone."""
from __future__ import annotations

import os
import stat

import pytest

from virtdoctor import engine, remedy
from virtdoctor.checks import kvm as K
from virtdoctor.facts import HostFacts, KvmProbe, Proc
from virtdoctor.facts.files import GROUP, GROUP_OBJ, MASK, OTHER, USER_OBJ, AclEntry, encode_acl_xattr
from virtdoctor.facts.libvirt import RecordedLibvirt
from virtdoctor.model import Status

WORKS = KvmProbe("/dev/kvm", True, None, api_version=12, vm_created=True, smm=False)
NO_VM = KvmProbe("/dev/kvm", True, "KVM_CREATE_VM failed: Device or resource busy", api_version=12)
DENIED = KvmProbe("/dev/kvm", False, "Permission denied (/dev/kvm)")

CAPS_KVM = """<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
<guest><os_type>hvm</os_type><arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator>
<domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>"""
CAPS_TCG = CAPS_KVM.replace("<domain type='kvm'/>", "")

CPU_NESTED_HIDDEN = "processor\t: 0\nflags\t\t: fpu vme pae sse2 hypervisor lahf_lm\n"
CPU_VMX = "processor\t: 0\nflags\t\t: fpu vme pae sse2 vmx lahf_lm\n"
CPU_BARE = "processor\t: 0\nflags\t\t: fpu vme pae sse2 lahf_lm\n"


# the kvm group of the fake hosts: 107 as on Debian when the suite runs as root; unprivileged,
# the runner's own group, so a fix's real chgrp of the fake /dev/kvm is allowed
KVM_GID = 107 if os.geteuid() == 0 else os.getegid()


def host(root, cpuinfo=CPU_NESTED_HIDDEN, modules=None, sysmods=()):
    root.passwd([("root", 0, 0), ("libvirt-qemu", 64055, 64055), ("ann", 1000, 1000)])
    root.group([("root", 0), ("kvm", KVM_GID, ["libvirt-qemu"]), ("libvirt-qemu", 64055), ("ann", 1000)])
    root.mkdir("/etc/libvirt")
    if cpuinfo is not None:
        root.write("/proc/cpuinfo", cpuinfo)
    if modules is not None:
        root.write("/proc/modules", modules)
    for m in sysmods:
        root.mkdir(f"/sys/module/{m}/parameters")


def make_kvm_node(root, mode=0o660, gid=KVM_GID):
    """/dev/kvm as crw-rw---- root:kvm 10:232, through the fake root's stat overlay (no root needed)."""
    return root.device("/dev/kvm", 10, 232, mode, 0, gid)


def facts_for(root, probe=WORKS, caps=CAPS_KVM, error=None) -> HostFacts:
    return HostFacts(root=str(root), uri="qemu:///system", kvm=probe, processes_override=[],
                     libvirt_facts=RecordedLibvirt(capabilities=caps, error=error), stat_overlay=root.stat_table)


def one(chk, facts):
    out = engine.run_check(chk, facts)
    assert len(out) == 1, out
    return out[0]


# -- kvm-device-missing ----------------------------------------------------------------------
def test_device_present(fake_root):
    host(fake_root)
    make_kvm_node(fake_root)
    assert one(K.kvm_device_missing, facts_for(fake_root)).status is Status.PASS


def test_device_is_a_plain_file(fake_root):
    host(fake_root)
    fake_root.write("/dev/kvm", "")
    f = one(K.kvm_device_missing, facts_for(fake_root))
    assert f.status is Status.FAIL and "not a character device" in f.message


@pytest.mark.parametrize("cpuinfo, modules, sysmods, expect", [
    pytest.param(CPU_VMX, "", (), "modprobe kvm_intel", id="vmx-module-not-loaded"),
    pytest.param(CPU_VMX.replace("vmx", "svm"), "", (), "modprobe kvm_amd", id="svm-module-not-loaded"),
    pytest.param(CPU_VMX, "kvm_intel 368640 0 - Live 0x0\nkvm 1118208 1 kvm_intel, Live 0x0\n", (),
                 "mknod /dev/kvm c 10 232", id="modules-loaded-node-missing"),
    pytest.param(CPU_BARE, None, ("kvm", "kvm_amd"), "mknod /dev/kvm", id="builtin-modules-in-sys-module"),
    pytest.param(CPU_NESTED_HIDDEN, "", (), "enable nested virtualisation", id="vm-without-nested"),
    pytest.param(CPU_BARE, "", (), "enable virtualisation in the firmware", id="bare-metal-virt-off"),
    pytest.param(None, None, (), "neither KVM modules nor CPU flags", id="no-proc-at-all"),
])
def test_device_missing_says_why(fake_root, cpuinfo, modules, sysmods, expect):
    host(fake_root, cpuinfo=cpuinfo, modules=modules, sysmods=sysmods)
    f = one(K.kvm_device_missing, facts_for(fake_root))
    assert f.status is Status.FAIL
    assert "/dev/kvm does not exist" in f.message and expect in f.message
    assert f.fix.auto.value == "manual"


def test_device_missing_fix_suggests_modprobe(fake_root):
    host(fake_root, cpuinfo=CPU_VMX, modules="")
    f = one(K.kvm_device_missing, facts_for(fake_root))
    assert f.fix.commands == ("modprobe kvm_intel",)


def test_dangling_device_symlink(fake_root):
    host(fake_root)
    fake_root.symlink("/dev/kvm", "/dev/nonexistent-kvm")
    assert "dangling symlink" in one(K.kvm_device_missing, facts_for(fake_root)).message


# -- kvm-device-permission ----------------------------------------------------------------------
def test_permission_group_kvm_0660(fake_root):
    host(fake_root)
    make_kvm_node(fake_root, 0o660, KVM_GID)
    assert one(K.kvm_device_permission, facts_for(fake_root)).status is Status.PASS


def test_permission_0600_denies_qemu_and_fix_restores(fake_root, tmp_path):
    host(fake_root)
    make_kvm_node(fake_root, 0o600, KVM_GID)
    facts = facts_for(fake_root)
    f = one(K.kvm_device_permission, facts)
    assert f.status is Status.FAIL
    assert "Could not access KVM kernel module: Permission denied" in f.message
    p = f.plan

    def recheck():
        r = one(K.kvm_device_permission, facts_for(fake_root))
        return r.status is Status.PASS, r.message

    out = remedy.apply_plan(p, remedy.Env(root=str(fake_root), accounts=facts.accounts), f.id, f.subject,
                            recheck, str(tmp_path / "b"))
    assert out.status == "fixed", out.detail
    assert stat.S_IMODE(os.stat(fake_root.path("/dev/kvm")).st_mode) == 0o660
    assert 'GROUP="kvm"' in fake_root.read(K.UDEV_RULE)


def test_permission_stray_acl_mask_denies(fake_root):
    host(fake_root)
    real = make_kvm_node(fake_root, 0o660, KVM_GID)
    acl = [AclEntry(USER_OBJ, 6, None), AclEntry(GROUP_OBJ, 6, None), AclEntry(GROUP, 6, 1000),
           AclEntry(MASK, 0, None), AclEntry(OTHER, 0, None)]
    try:
        os.setxattr(real, "system.posix_acl_access", encode_acl_xattr(acl))
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on this filesystem: {exc}")
    facts = facts_for(fake_root)
    f = one(K.kvm_device_permission, facts)
    assert f.status is Status.FAIL and "ACL" in f.message
    assert "setfacl -b /dev/kvm" in f.fix.commands


def test_permission_skips_when_qemu_user_missing(fake_root):
    host(fake_root)
    fake_root.write("/etc/libvirt/qemu.conf", 'user = "ghost"\n')
    make_kvm_node(fake_root)
    assert one(K.kvm_device_permission, facts_for(fake_root)).status is Status.SKIP


def test_permission_fix_without_kvm_group_is_manual(fake_root):
    host(fake_root)
    fake_root.group([("root", 0), ("libvirt-qemu", 64055)])
    make_kvm_node(fake_root, 0o600, 0)
    facts = facts_for(fake_root)
    f = one(K.kvm_device_permission, facts)
    assert f.status is Status.FAIL and f.fix.auto.value == "manual"


# -- kvm-hw-virt-missing -------------------------------------------------------------------------
def test_nested_host_with_hidden_flags_passes_by_probe(fake_root):
    host(fake_root, cpuinfo=CPU_NESTED_HIDDEN, sysmods=("kvm", "kvm_pvm"))
    make_kvm_node(fake_root)
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root))
    assert f.status is Status.PASS
    assert "CPU flags hide vmx/svm" in f.message and "virt-host-validate" in f.message
    assert f.evidence["probe"]["vm_created"] is True
    assert f.evidence["cpu"] == {"vmx": False, "svm": False, "hypervisor": True, "known": True}


def test_nested_parameter_is_reported(fake_root):
    host(fake_root, cpuinfo=CPU_VMX, sysmods=("kvm", "kvm_intel"))
    fake_root.write("/sys/module/kvm_intel/parameters/nested", "Y\n")
    make_kvm_node(fake_root)
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root))
    assert f.status is Status.PASS and f.evidence["nested"] == {"kvm_intel": True}


def test_device_opens_but_cannot_create_vm(fake_root):
    host(fake_root, cpuinfo=CPU_VMX)
    make_kvm_node(fake_root)
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root, probe=NO_VM))
    assert f.status is Status.FAIL and "KVM_CREATE_VM failed" in f.message


def test_probe_works_but_libvirt_offers_no_kvm(fake_root):
    host(fake_root)
    make_kvm_node(fake_root)
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root, caps=CAPS_TCG))
    assert f.status is Status.FAIL
    assert "could not find capabilities for domaintype=kvm" in f.message


def test_probe_works_and_libvirt_is_down(fake_root):
    host(fake_root)
    make_kvm_node(fake_root)
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root, error="Failed to connect socket"))
    assert f.status is Status.PASS and "not available" in f.evidence["capabilities"]


def test_no_device_no_flags_no_modules_fails(fake_root):
    host(fake_root, cpuinfo=CPU_BARE, modules="")
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root, probe=KvmProbe("/dev/kvm", False, "No such file")))
    assert f.status is Status.FAIL and "hardware virtualisation is off or absent" in f.message


def test_no_device_but_flags_present_leaves_it_to_device_missing(fake_root):
    host(fake_root, cpuinfo=CPU_VMX, modules="")
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root, probe=KvmProbe("/dev/kvm", False, "No such file")))
    assert f.status is Status.SKIP and "kvm-device-missing" in f.message


def test_permission_denied_probe_is_not_called_missing_virt(fake_root):
    host(fake_root, cpuinfo=CPU_NESTED_HIDDEN)
    make_kvm_node(fake_root, 0o600)
    f = one(K.kvm_hw_virt_missing, facts_for(fake_root, probe=DENIED))
    assert f.status is Status.SKIP and "Permission denied" in f.message


def test_foreign_root_cannot_be_probed(fake_root):
    """--root of another machine: no probe; hidden flags prove nothing, so no false failure."""
    host(fake_root, cpuinfo=CPU_NESTED_HIDDEN)
    make_kvm_node(fake_root)
    f = one(K.kvm_hw_virt_missing, HostFacts(root=str(fake_root), uri="qemu:///system", offline=True,
                                             processes_override=[]))
    assert f.status is Status.SKIP and "nested hosts hide them" in f.message
    host(fake_root, cpuinfo=CPU_VMX)
    f = one(K.kvm_hw_virt_missing, HostFacts(root=str(fake_root), uri="qemu:///system", offline=True,
                                             processes_override=[]))
    assert f.status is Status.PASS and "not probed" in f.message


def test_kvm_device_permission_skips_when_qemu_conf_does_not_parse(fake_root):
    """A broken qemu.conf leaves QEMU's account unknown: no verdict for a guessed account."""
    from virtdoctor.checks.kvm import kvm_device_permission
    from virtdoctor.engine import run_check
    from virtdoctor.facts import HostFacts

    fake_root.passwd(["root:x:0:0:root:/root:/bin/sh", "libvirt-qemu:x:64055:107::/var/lib/libvirt:/bin/false"])
    fake_root.group(["root:x:0:", "kvm:x:107:libvirt-qemu"])
    fake_root.write("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu\n')
    fake_root.write("/dev/kvm", "", mode=0o600)
    [f] = run_check(kvm_device_permission, HostFacts(root=str(fake_root), offline=True))
    assert f.status.value == "skip"
    assert "/etc/libvirt/qemu.conf does not parse" in f.message and "unterminated string" in f.message
