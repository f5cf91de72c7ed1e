"""Live: a domain whose <emulator> is RHEL's /usr/libexec/qemu-kvm on this Debian host fails
with libvirt's real text; virtdoctor finds it and `fix --unsafe` points it at the
capabilities' emulator, after which the guest starts."""
from __future__ import annotations

import json
import os

import libvirt
import pytest

import vmhelpers
from vmhelpers import EMULATOR, start_and_prove

QEMU_KVM = "/usr/libexec/qemu-kvm"
TEXT = f"Cannot check QEMU binary {QEMU_KVM}: No such file or directory"


def findings(out: str, slug: str) -> list[dict]:
    return [f for f in json.loads(out)["findings"] if f["id"] == slug]


def test_rhel_emulator_path_fails_then_fix_points_at_qemu_system(vm_xml, define_vm, libvirt_conn, file_guard,
                                                                  run_virtdoctor):
    name = "vdtest-emu-qemukvm"
    guard = file_guard(QEMU_KVM)
    assert not guard.existed, f"{QEMU_KVM} exists on this host: the test would not break anything"
    xml = vm_xml(name).replace(f"<emulator>{EMULATOR}</emulator>", f"<emulator>{QEMU_KVM}</emulator>")
    assert QEMU_KVM in xml

    # libvirt refuses the definition while the binary is absent
    with pytest.raises(libvirt.libvirtError) as exc:
        libvirt_conn.defineXML(xml)
    assert TEXT in str(exc.value)

    # defined while a qemu-kvm existed (an XML from a RHEL host), then the binary goes away
    os.symlink(EMULATOR, QEMU_KVM)
    dom = define_vm(xml)
    os.unlink(QEMU_KVM)
    with pytest.raises(libvirt.libvirtError) as exc:
        dom.create()
    assert TEXT in str(exc.value)

    rc, out, err = run_virtdoctor("--format", "json", "check", "--only", "qemu-emulator-missing", "--domain", name)
    assert rc == 2, err
    dom_f = [f for f in findings(out, "qemu-emulator-missing") if f["subject"] == f"domain:{name}"]
    assert [f["status"] for f in dom_f] == ["fail"]
    assert dom_f[0]["message"] == TEXT
    assert dom_f[0]["fix"]["auto"] == "unsafe"
    host_f = [f for f in findings(out, "qemu-emulator-missing")
              if f["subject"] == "host" and f["evidence"]["emulator"] == QEMU_KVM]
    assert host_f and host_f[0]["status"] == "fail" and f"domain {name}" in host_f[0]["message"]

    # without --unsafe the guest-visible fix is held back
    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--only", "qemu-emulator-missing",
                                  "--domain", name)
    actions = [a for a in json.loads(out)["actions"] if a["subject"] == f"domain:{name}"]
    assert actions[0]["status"] == "skipped" and "--unsafe" in actions[0].get("detail", ""), (actions, err)
    assert QEMU_KVM in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--unsafe", "--only", "qemu-emulator-missing",
                                  "--domain", name)
    actions = [a for a in json.loads(out)["actions"] if a["subject"] == f"domain:{name}"]
    assert actions and actions[0]["status"] == "fixed", (out, err)
    assert actions[0]["applied"] and actions[0]["verified"] and actions[0]["backup"]
    inactive = vmhelpers.open_with_timeout().lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert f"<emulator>{EMULATOR}</emulator>" in inactive

    proof = start_and_prove(dom)
    assert proof.pid > 0
    rc, out, err = run_virtdoctor("--format", "json", "check", "--only", "qemu-emulator-missing", "--domain", name)
    assert [f["status"] for f in findings(out, "qemu-emulator-missing")
            if f["subject"] == f"domain:{name}"] == ["pass"]
