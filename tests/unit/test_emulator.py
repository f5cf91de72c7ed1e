"""Emulator and ROM checks on fake roots: emulators from the capabilities and the defined
domains, the domain's <emulator> and its fix, ROM files in QEMU's search path and <rom file>."""
from __future__ import annotations

import os

import pytest
from lxml import etree

from virtdoctor import engine, remedy
from virtdoctor.checks import emulator as EM
from virtdoctor.domxml import parse_domain
from virtdoctor.facts import HostFacts
from virtdoctor.facts import firmware as F
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.model import Status

CAPS = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest><os_type>hvm</os_type>
    <arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <domain type='qemu'/><domain type='kvm'/>
    </arch>
  </guest>
  <guest><os_type>hvm</os_type>
    <arch name='i686'><emulator>/usr/bin/qemu-system-i386</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <domain type='qemu'/>
    </arch>
  </guest>
</capabilities>"""

SEABIOS = ("bios-256k.bin", "vgabios-stdvga.bin", "vgabios-cirrus.bin", "vgabios-qxl.bin")
IPXE = ("efi-rtl8139.rom", "efi-e1000.rom", "efi-virtio.rom", "efi-e1000e.rom")


def base(root, *, emulators=("qemu-system-x86_64", "qemu-system-i386"), seabios=True, ipxe=True):
    root.passwd([("root", 0, 0, "/root", "/bin/bash"), ("libvirt-qemu", 64055, 64055)])
    root.group([("root", 0), ("kvm", 107, ["libvirt-qemu"]), ("libvirt-qemu", 64055)])
    root.write("/etc/libvirt/qemu.conf", "")
    for e in emulators:
        root.write(f"/usr/bin/{e}", "#!/bin/sh\n", mode=0o755)
    if seabios:
        for r in SEABIOS:
            root.write(f"/usr/share/seabios/{r}", b"rom")
    if ipxe:
        for r in IPXE:
            root.write(f"/usr/lib/ipxe/qemu/{r}", b"rom")


def domain_xml(name="vm1", emulator="/usr/bin/qemu-system-x86_64", arch="x86_64", devices=""):
    emu = f"<emulator>{emulator}</emulator>" if emulator else ""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>"
            f"<os><type arch='{arch}' machine='pc'>hvm</type></os><features><acpi/></features>"
            f"<devices>{emu}{devices}</devices></domain>")


def info(xml, name="vm1", active=False):
    return DomainInfo(name=name, uuid=f"uuid-{name}", xml=xml, active=active)


def facts_for(root, *, domains=(), offline=False, caps=CAPS):
    return HostFacts(root=str(root), uri="qemu:///system", offline=offline,
                     libvirt_facts=None if offline else RecordedLibvirt(capabilities=caps, domains=list(domains)))


def dom_of(xml, name="vm1", defined=True, active=False):
    return parse_domain(xml, f"domain {name}", subject=f"domain:{name}",
                        info=info(xml, name, active) if defined else None)


def one(chk, facts, dom=None):
    out = engine.run_check(chk, facts, dom)
    assert len(out) == 1, out
    return out[0]


# --------------------------------------------------------------------------- qemu-emulator-missing (host)

def test_host_emulators_from_capabilities_and_domains(fake_root):
    base(fake_root)
    rhel = domain_xml("rhel", emulator="/usr/libexec/qemu-kvm")
    facts = facts_for(fake_root, domains=[info(domain_xml("ok"), "ok"), info(rhel, "rhel")])
    out = {f.evidence["emulator"]: f for f in engine.run_check(EM.qemu_emulator_missing_host, facts)}
    assert set(out) == {"/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-i386", "/usr/libexec/qemu-kvm"}
    assert out["/usr/bin/qemu-system-x86_64"].status is Status.PASS
    assert out["/usr/bin/qemu-system-x86_64"].evidence["used_by"] == ["capabilities (x86_64)", "domain ok"]
    bad = out["/usr/libexec/qemu-kvm"]
    assert bad.status is Status.FAIL
    assert bad.message.startswith("Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory")
    assert "domain rhel" in bad.message


def test_host_emulator_not_executable(fake_root):
    base(fake_root)
    os.chmod(fake_root.path("/usr/bin/qemu-system-i386"), 0o644)
    out = {f.evidence["emulator"]: f for f in engine.run_check(EM.qemu_emulator_missing_host, facts_for(fake_root))}
    assert out["/usr/bin/qemu-system-i386"].status is Status.FAIL
    assert "QEMU binary /usr/bin/qemu-system-i386 is not executable" in out["/usr/bin/qemu-system-i386"].message


def test_host_no_emulator_at_all(fake_root):
    base(fake_root, emulators=())
    f = one(EM.qemu_emulator_missing_host, facts_for(fake_root, caps="<capabilities><host/></capabilities>"))
    assert f.status is Status.FAIL and "no QEMU emulator" in f.message


def test_host_emulator_check_skips_without_libvirt(fake_root):
    base(fake_root)
    f = one(EM.qemu_emulator_missing_host, facts_for(fake_root, offline=True))
    assert f.status is Status.SKIP and "--offline" in f.message


def test_emulator_state_runs_version_on_the_live_host():
    state = F.emulator_state(HostFacts(), "/bin/true")
    assert state.ok
    state = F.emulator_state(HostFacts(), "/bin/false")
    assert not state.ok and "--version failed" in state.problem


# --------------------------------------------------------------------------- qemu-emulator-missing (domain)

@pytest.mark.parametrize("xml, status, text", [
    pytest.param(domain_xml(), "pass", "/usr/bin/qemu-system-x86_64 exists", id="debian-path"),
    pytest.param(domain_xml(emulator="/usr/libexec/qemu-kvm"), "fail",
                 "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory", id="rhel-path"),
    pytest.param(domain_xml(emulator=None), "pass", "libvirt uses /usr/bin/qemu-system-x86_64", id="no-emulator"),
    pytest.param(domain_xml(emulator=None, arch="aarch64"), "fail",
                 "unsupported configuration: No emulator found for arch 'aarch64'", id="no-aarch64-emulator"),
])
def test_domain_emulator(fake_root, xml, status, text):
    base(fake_root)
    f = one(EM.qemu_emulator_missing, facts_for(fake_root), dom_of(xml))
    assert f.status.value == status, f.message
    assert text in f.message


def test_domain_emulator_skips_offline(fake_root):
    base(fake_root)
    f = one(EM.qemu_emulator_missing, facts_for(fake_root, offline=True), dom_of(domain_xml()))
    assert f.status is Status.SKIP


def test_domain_emulator_fix_points_at_capabilities_emulator(fake_root):
    base(fake_root)
    xml = domain_xml(emulator="/usr/libexec/qemu-kvm")
    facts = facts_for(fake_root)
    dom = dom_of(xml, active=True)
    f = one(EM.qemu_emulator_missing, facts, dom)
    assert f.fix.auto.value == "unsafe"
    p = EM.point_at_capabilities_emulator(facts, dom)
    action = p.actions[0]
    assert isinstance(action, remedy.EditDomain) and action.name == "vm1"
    assert action.old_xml.strip() == dom.info.xml.strip()  # the diff is against libvirt's own XML
    assert etree.fromstring(action.new_xml).findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert any("next boot" in n for n in p.notes)
    assert one(EM.qemu_emulator_missing, facts, dom_of(action.new_xml)).status is Status.PASS
    # nothing to redefine for a preflight XML
    assert EM.point_at_capabilities_emulator(facts, dom_of(xml, defined=False)) is None


# --------------------------------------------------------------------------- romfile-missing (host)

def test_host_roms_present(fake_root):
    base(fake_root)
    out = engine.run_check(EM.romfile_missing_host, facts_for(fake_root))
    assert [f.status for f in out] == [Status.PASS]  # i386 and x86_64 share the search path: one result
    assert out[0].evidence["emulators"] == ["/usr/bin/qemu-system-i386", "/usr/bin/qemu-system-x86_64"]
    assert out[0].evidence["search_path"] == list(F.DEFAULT_ROM_DIRS)


def test_host_roms_missing_without_ipxe(fake_root):
    base(fake_root, ipxe=False)
    out = engine.run_check(EM.romfile_missing_host, facts_for(fake_root))
    assert {f.status for f in out} == {Status.FAIL}
    f = out[0]
    assert f.evidence["missing"] == ["efi-rtl8139.rom", "efi-e1000.rom", "efi-virtio.rom"]
    assert 'failed to find romfile "efi-rtl8139.rom"' in f.message
    assert f.fix.auto.value == "manual" and f.fix.commands == ("apt-get install -y ipxe-qemu",)


def test_host_roms_offline_use_installed_emulators(fake_root):
    base(fake_root, seabios=False, emulators=("qemu-system-aarch64",))
    f = one(EM.romfile_missing_host, facts_for(fake_root, offline=True))
    assert f.status is Status.PASS and f.evidence["arches"] == ["aarch64"]


def test_host_roms_dangling_symlink_is_missing(fake_root):
    base(fake_root)
    os.unlink(fake_root.path("/usr/share/seabios/vgabios-stdvga.bin"))
    fake_root.symlink("/usr/share/qemu/vgabios-stdvga.bin", "/usr/share/seabios/gone.bin")
    out = engine.run_check(EM.romfile_missing_host, facts_for(fake_root))
    assert all("vgabios-stdvga.bin" in f.evidence["missing"] for f in out)
    assert "seabios" in out[0].evidence["packages"]


# --------------------------------------------------------------------------- romfile-missing (domain)

VGA = "<video><model type='vga' vram='16384' heads='1' primary='yes'/></video>"
NIC = "<interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/>{model}{extra}</interface>"


@pytest.mark.parametrize("devices, remove, status, text", [
    pytest.param(VGA, None, "pass", "1 ROM file(s) found", id="vga-present"),
    pytest.param(VGA, "/usr/share/seabios/vgabios-stdvga.bin", "fail",
                 'video vga: failed to find romfile "vgabios-stdvga.bin"', id="vga-missing"),
    pytest.param(NIC.format(model="<model type='virtio'/>", extra=""), "/usr/lib/ipxe/qemu/efi-virtio.rom", "fail",
                 'failed to find romfile "efi-virtio.rom"', id="virtio-nic-rom-missing"),
    pytest.param(NIC.format(model="", extra=""), "/usr/lib/ipxe/qemu/efi-rtl8139.rom", "fail",
                 'failed to find romfile "efi-rtl8139.rom"', id="default-nic-is-rtl8139"),
    pytest.param(NIC.format(model="<model type='virtio'/>", extra="<rom enabled='no'/>"),
                 "/usr/lib/ipxe/qemu/efi-virtio.rom", "pass", "no device loads an option ROM", id="rom-disabled"),
    pytest.param(NIC.format(model="<model type='virtio'/>", extra="<address type='virtio-mmio'/>"),
                 "/usr/lib/ipxe/qemu/efi-virtio.rom", "pass", "no device loads an option ROM", id="virtio-mmio"),
    pytest.param(NIC.format(model="<model type='e1000'/>", extra="<rom file='/opt/roms/custom.rom'/>"), None,
                 "fail", "<rom file='/opt/roms/custom.rom'> does not exist", id="explicit-rom-gone"),
    pytest.param("<video><model type='none'/></video>", None, "pass", "no device", id="no-video"),
])
def test_domain_roms(fake_root, devices, remove, status, text):
    base(fake_root)
    if remove:
        os.unlink(fake_root.path(remove))
    f = one(EM.romfile_missing, facts_for(fake_root), dom_of(domain_xml(devices=devices)))
    assert f.status.value == status, f.message
    assert text in f.message


def test_domain_explicit_rom_unreadable_for_qemu(fake_root):
    base(fake_root)
    fake_root.write("/opt/roms/custom.rom", b"rom", mode=0o600)  # owned by whoever runs the tests
    if os.stat(fake_root.path("/opt/roms/custom.rom")).st_uid == 64055:
        pytest.skip("the test runs as the fake QEMU uid")
    xml = domain_xml(devices=NIC.format(model="<model type='e1000'/>", extra="<rom file='/opt/roms/custom.rom'/>"))
    f = one(EM.romfile_missing, facts_for(fake_root), dom_of(xml))
    assert f.status is Status.FAIL and "libvirt-qemu:libvirt-qemu cannot read /opt/roms/custom.rom" in f.message
    os.chmod(fake_root.path("/opt/roms/custom.rom"), 0o644)
    assert one(EM.romfile_missing, facts_for(fake_root), dom_of(xml)).status is Status.PASS
    os.chmod(fake_root.path("/opt/roms"), 0o700)
    f = one(EM.romfile_missing, facts_for(fake_root), dom_of(xml))
    assert f.status is Status.FAIL and "cannot search /opt/roms" in f.message


def test_domain_rom_fix_is_manual_install(fake_root):
    base(fake_root, seabios=False)
    f = one(EM.romfile_missing, facts_for(fake_root), dom_of(domain_xml(devices=VGA)))
    assert f.fix.auto.value == "manual" and f.fix.commands == ("apt-get install -y seabios",)


def test_domain_emulator_fix_without_capabilities_uses_installed_emulator(fake_root):
    base(fake_root)
    dom = dom_of(domain_xml(emulator="/usr/libexec/qemu-kvm"))
    facts = facts_for(fake_root)
    f = one(EM.qemu_emulator_missing, facts, dom)
    broken = HostFacts(root=str(fake_root), uri="qemu:///system",
                       libvirt_facts=RecordedLibvirt(error="libvirt: the daemon did not answer"))
    p = EM.point_at_capabilities_emulator(broken, dom)
    assert etree.fromstring(p.actions[0].new_xml).findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
