"""Live: /dev/kvm on the real host. Take QEMU's access away and watch a KVM guest fail with
QEMU's own error, let virtdoctor fix it, start the guest; and show that the probe, not the CPU
flags, decides whether KVM works (this nested host hides vmx/svm)."""
from __future__ import annotations

import json
import os
import stat

import libvirt
import pytest

import vmhelpers
from vmhelpers import start_and_prove

UDEV_RULE = "/etc/udev/rules.d/65-kvm.rules"


def findings(run_virtdoctor, *args):
    rc, out, err = run_virtdoctor("--format", "json", *args)
    assert out, err
    return rc, {f["id"]: f for f in json.loads(out)["findings"]}


@pytest.mark.needs_kvm
def test_kvm_mode_0600_fails_guest_and_fix_restores(file_guard, vm_xml, define_vm, run_virtdoctor):
    file_guard("/dev/kvm")
    file_guard(UDEV_RULE)
    file_guard("/etc/udev/rules.d")
    xml = vm_xml("vdtest-kvm-perm", virt_type="kvm")
    dom = define_vm(xml)
    os.chmod("/dev/kvm", 0o600)
    with pytest.raises(libvirt.libvirtError) as err:
        dom.create()
    # libvirt quotes the tail of the QEMU log; when QEMU died before libvirt read it, the
    # message is only "process exited while connecting to monitor" and the log has the text
    said = str(err.value)
    log = vmhelpers.QEMU_LOG_DIR / "vdtest-kvm-perm.log"
    if log.exists():
        said += log.read_text(errors="replace")[-4000:]
    assert "Could not access KVM kernel module: Permission denied" in said, said

    rc, found = findings(run_virtdoctor, "check", "--only", "kvm-device-permission")
    f = found["kvm-device-permission"]
    assert f["status"] == "fail" and rc == 2
    assert f["evidence"]["mode"] == "0600"
    assert "Could not access KVM kernel module: Permission denied" in f["message"]

    rc, out, err = run_virtdoctor("fix", "--yes", "--only", "kvm-device-permission")
    assert rc == 0, out + err
    st = os.stat("/dev/kvm")
    assert stat.S_IMODE(st.st_mode) == 0o660
    # persisted: Debian's own 50-udev-default.rules already sets group kvm and 0660 (then no
    # rule is written), else virtdoctor wrote its rule
    from virtdoctor.checks.kvm import udev_rule_grants
    from virtdoctor.facts import HostFacts
    assert udev_rule_grants(HostFacts()) is not None
    if not os.path.exists("/usr/lib/udev/rules.d/50-udev-default.rules"):
        assert 'GROUP="kvm"' in open(UDEV_RULE).read()

    try:
        dom = dom.connect().lookupByName("vdtest-kvm-perm")
    except libvirt.libvirtError:  # a parallel session's vdtest-* sweep removed it: define it again
        dom = define_vm(xml)
    proof = start_and_prove(dom)
    assert proof.virt_type == "kvm"


def test_kvm_hw_virt_passes_on_this_nested_host_where_flags_are_hidden(run_virtdoctor, live_host):
    with open("/proc/cpuinfo") as fh:
        flags = set(next(l for l in fh if l.startswith("flags")).split(":", 1)[1].split())
    rc, found = findings(run_virtdoctor, "check", "--only", "kvm-hw-virt-missing", "kvm-device-missing")
    f = found["kvm-hw-virt-missing"]
    if live_host.kvm:
        assert f["status"] == "pass", f
        assert f["evidence"]["probe"]["vm_created"] is True
        assert f["evidence"]["probe"]["api_version"] == 12
        if not ({"vmx", "svm"} & flags):
            assert "the CPU flags hide vmx/svm" in f["message"]
            assert f["evidence"]["cpu"]["vmx"] is False and f["evidence"]["cpu"]["svm"] is False
    assert found["kvm-device-missing"]["status"] == ("pass" if os.path.exists("/dev/kvm") else "fail")


@pytest.mark.needs_kvm
def test_libvirt_offers_kvm_as_the_check_says(libvirt_conn, run_virtdoctor):
    caps = libvirt_conn.getCapabilities()
    rc, found = findings(run_virtdoctor, "check", "--only", "kvm-hw-virt-missing")
    assert ("<domain type='kvm'" in caps) == ("offer kvm" in found["kvm-hw-virt-missing"]["evidence"]["capabilities"]
                                             or "kvm," in found["kvm-hw-virt-missing"]["evidence"]["capabilities"])
