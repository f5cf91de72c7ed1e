"""Firmware checks on fake roots: descriptors (override, mask, broken), qemu.conf's nvram
list, libvirt's firmware choice, secure boot vs SMM, UEFI vs ACPI, and the fixers' XML."""
from __future__ import annotations

import glob
import json
import os

import pytest
from lxml import etree

from virtdoctor import engine
from virtdoctor.checks import firmware as FW
from virtdoctor.domxml import parse_domain
from virtdoctor.facts import HostFacts
from virtdoctor.facts import firmware as F
from virtdoctor.facts.kvm import KvmProbe
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.model import Status

CORPUS = "/work/shared/corpus/libvirt-9.0.0-qemuxml2argv"

CAPS = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest><os_type>hvm</os_type>
    <arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <machine maxCpus='288'>pc-q35-7.2</machine>
      <machine canonical='pc-q35-7.2' maxCpus='288'>q35</machine>
      <domain type='qemu'/><domain type='kvm'/>
    </arch>
  </guest>
</capabilities>"""


def descriptor(code, vars_, machines, features=(), arch="x86_64", interfaces=("uefi",)):
    return json.dumps({
        "description": "test", "interface-types": list(interfaces),
        "mapping": {"device": "flash", "executable": {"filename": code, "format": "raw"},
                    "nvram-template": {"filename": vars_, "format": "raw"}},
        "targets": [{"architecture": arch, "machines": list(machines)}],
        "features": list(features), "tags": []})


SECURE_ENROLLED = ("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd", ["pc-q35-*"],
                   ["acpi-s3", "enrolled-keys", "requires-smm", "secure-boot"])
SECURE = ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", ["pc-q35-*"],
          ["acpi-s3", "requires-smm", "secure-boot"])
PLAIN = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", ["pc-i440fx-*", "pc-q35-*"],
         ["acpi-s3"])


def ovmf(root, *, files=True, descriptors=True):
    """Debian 12's ovmf package: three descriptors and their files."""
    if descriptors:
        for name, d in (("40-edk2-x86_64-secure-enrolled.json", SECURE_ENROLLED),
                        ("50-edk2-x86_64-secure.json", SECURE), ("60-edk2-x86_64.json", PLAIN)):
            root.write(f"/usr/share/qemu/firmware/{name}", descriptor(*d))
    if files:
        for d in (SECURE_ENROLLED, SECURE, PLAIN):
            root.write(d[0], b"code")
            root.write(d[1], b"vars")


def base(root, qemu_conf=""):
    root.passwd([("root", 0, 0, "/root", "/bin/bash"), ("libvirt-qemu", 64055, 64055)])
    root.group([("root", 0), ("kvm", 107, ["libvirt-qemu"]), ("libvirt-qemu", 64055)])
    root.write("/etc/libvirt/qemu.conf", qemu_conf)
    root.write("/usr/bin/qemu-system-x86_64", "#!/bin/sh\n", mode=0o755)


def facts_for(root, *, smm=False, caps=CAPS, offline=False, domains=(), kvm=True):
    probe = KvmProbe("/dev/kvm", True, None, api_version=12, vm_created=True, smm=smm) if kvm else None
    return HostFacts(root=str(root), uri="qemu:///system", offline=offline, kvm=probe,
                     libvirt_facts=None if offline else RecordedLibvirt(capabilities=caps, domains=list(domains)))


def domain_xml(*, os_attrs="", os_inner="", machine="q35", arch="x86_64", virt="kvm", features="<acpi/>",
               name="vm1", devices=""):
    feats = f"<features>{features}</features>" if features is not None else ""
    return (f"<domain type='{virt}'><name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>"
            f"<os{os_attrs}><type arch='{arch}' machine='{machine}'>hvm</type>{os_inner}</os>{feats}"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices></domain>")


def dom_of(xml, name="vm1", defined=True, active=False):
    info = DomainInfo(name=name, uuid="u-" + name, xml=xml, active=active) if defined else None
    return parse_domain(xml, f"domain {name}", subject=f"domain:{name}", info=info)


def run(chk, facts, dom=None):
    return engine.run_check(chk, facts, dom)


def one(chk, facts, dom=None):
    out = run(chk, facts, dom)
    assert len(out) == 1, out
    return out[0]


def by_key(findings):
    return {f.evidence.get("arch") or f.evidence.get("entry") or f.evidence.get("descriptor"): f for f in findings}


# --------------------------------------------------------------------------- descriptor facts

def test_descriptors_etc_overrides_and_empty_file_masks(fake_root):
    base(fake_root)
    ovmf(fake_root)
    fake_root.write("/etc/qemu/firmware/60-edk2-x86_64.json",
                    descriptor("/opt/ovmf/CODE.fd", "/opt/ovmf/VARS.fd", ["pc-q35-*"]))
    fake_root.write("/etc/qemu/firmware/40-edk2-x86_64-secure-enrolled.json", "")
    descs = F.firmware_descriptors(facts_for(fake_root))
    assert [d.name for d in descs] == ["50-edk2-x86_64-secure.json", "60-edk2-x86_64.json"]
    assert descs[1].path == "/etc/qemu/firmware/60-edk2-x86_64.json"
    assert descs[1].overrides == "/usr/share/qemu/firmware/60-edk2-x86_64.json"
    assert descs[1].executable == "/opt/ovmf/CODE.fd"


def test_descriptor_parse_error_and_dangling_symlink_are_kept_as_errors(fake_root):
    base(fake_root)
    fake_root.write("/usr/share/qemu/firmware/10-bad.json", "{not json")
    fake_root.symlink("/usr/share/qemu/firmware/20-gone.json", "/nowhere/20-gone.json")
    descs = F.firmware_descriptors(facts_for(fake_root))
    assert [(d.name, bool(d.error)) for d in descs] == [("10-bad.json", True), ("20-gone.json", True)]
    assert "dangling" in descs[1].error


def test_canonical_machine_from_capabilities_and_fallback(fake_root):
    base(fake_root)
    assert F.canonical_machine(facts_for(fake_root), "x86_64", "q35") == "pc-q35-7.2"
    assert F.canonical_machine(facts_for(fake_root), "x86_64", "") == "pc-i440fx-7.2"
    offline = facts_for(fake_root, offline=True)
    assert F.canonical_machine(offline, "x86_64", "q35") == "pc-q35-"
    assert F.canonical_machine(offline, "aarch64", "") == "virt-"


# --------------------------------------------------------------------------- uefi-firmware-missing (host)

def test_host_healthy_ovmf(fake_root):
    base(fake_root)
    ovmf(fake_root)
    f = one(FW.uefi_firmware_missing_host, facts_for(fake_root))
    assert f.status is Status.PASS and "3 UEFI descriptor(s)" in f.message


def test_host_without_ovmf_fails_as_warning(fake_root):
    base(fake_root)
    f = one(FW.uefi_firmware_missing_host, facts_for(fake_root))
    assert f.status is Status.FAIL and f.severity.value == "warning"
    assert "Unable to find any firmware to satisfy 'efi'" in f.message
    assert f.fix.auto.value == "manual" and "apt-get install -y ovmf" in f.fix.commands


def test_host_descriptor_naming_missing_code_file_is_an_error(fake_root):
    base(fake_root)
    ovmf(fake_root)
    os.unlink(fake_root.path(SECURE_ENROLLED[0]))
    f = one(FW.uefi_firmware_missing_host, facts_for(fake_root))
    assert f.status is Status.FAIL and f.severity.value == "error"
    assert SECURE_ENROLLED[0] in f.message and "still picks" in f.message


def test_host_broken_descriptor_and_nvram_list(fake_root):
    base(fake_root, qemu_conf='nvram = [\n  "/usr/share/OVMF/OVMF_CODE_4M.fd:/usr/share/OVMF/OVMF_VARS_4M.fd",\n'
                              '  "/usr/share/AAVMF/AAVMF_CODE.fd:/usr/share/AAVMF/AAVMF_VARS.fd",\n'
                              '  "/usr/share/OVMF/nocolon.fd"\n]\n')
    ovmf(fake_root)
    fake_root.write("/etc/qemu/firmware/99-broken.json", "[]")
    out = run(FW.uefi_firmware_missing_host, facts_for(fake_root))
    statuses = {(f.evidence.get("descriptor") or f.evidence.get("entry") or f.evidence.get("arch")): f.status.value
                for f in out}
    assert statuses == {
        "/etc/qemu/firmware/99-broken.json": "fail",
        "x86_64": "pass",
        "/usr/share/OVMF/OVMF_CODE_4M.fd:/usr/share/OVMF/OVMF_VARS_4M.fd": "pass",
        "/usr/share/AAVMF/AAVMF_CODE.fd:/usr/share/AAVMF/AAVMF_VARS.fd": "fail",
        "/usr/share/OVMF/nocolon.fd": "fail",
    }


def test_host_arch_from_installed_emulators_when_offline(fake_root):
    base(fake_root)
    fake_root.write("/usr/bin/qemu-system-aarch64", "", mode=0o755)
    os.unlink(fake_root.path("/usr/bin/qemu-system-x86_64"))
    f = one(FW.uefi_firmware_missing_host, facts_for(fake_root, offline=True))
    assert f.status is Status.FAIL and "aarch64" in f.message and "AAVMF" in f.message
    assert "apt-get install -y qemu-efi-aarch64" in f.fix.commands


# --------------------------------------------------------------------------- uefi-firmware-missing (domain)

EFI_Q35 = domain_xml(os_attrs=" firmware='efi'")


@pytest.mark.parametrize("xml, setup, status, text", [
    pytest.param(EFI_Q35, "ovmf", "pass", "40-edk2-x86_64-secure-enrolled.json", id="efi-q35-picks-first"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'",
                            os_inner="<firmware><feature enabled='no' name='secure-boot'/></firmware>"),
                 "ovmf", "pass", "60-edk2-x86_64.json", id="efi-q35-insecure-request"),
    pytest.param(EFI_Q35, "none", "fail", "Unable to find any firmware to satisfy 'efi'", id="no-ovmf"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'", machine="pc",
                            os_inner="<firmware><feature enabled='yes' name='secure-boot'/></firmware>"),
                 "ovmf", "fail", "pc-i440fx-7.2 with secure-boot=yes", id="secure-boot-on-i440fx"),
    pytest.param(EFI_Q35, "no-files", "fail", "does not exist", id="chosen-descriptor-files-gone"),
    pytest.param(domain_xml(os_inner="<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"),
                 "ovmf", "pass", "OVMF_VARS_4M.fd", id="manual-loader-template-from-descriptor"),
    pytest.param(domain_xml(os_inner="<loader readonly='yes' type='pflash'>/opt/CODE.fd</loader>"),
                 "opt-code", "fail", "unable to find any master var store for loader: /opt/CODE.fd",
                 id="manual-loader-no-template"),
    pytest.param(domain_xml(os_inner="<loader readonly='yes' type='pflash'>/opt/CODE.fd</loader>"
                                     "<nvram template='/opt/VARS.fd'>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram>"),
                 "opt-code", "fail", "<nvram template='/opt/VARS.fd'> does not exist", id="nvram-template-gone"),
    pytest.param(domain_xml(os_inner="<loader readonly='yes' type='pflash'>/usr/share/OVMF/gone.fd</loader>"),
                 "ovmf", "fail", "<loader> /usr/share/OVMF/gone.fd does not exist", id="manual-loader-gone"),
    pytest.param(domain_xml(features=None), "none", "pass", "no UEFI firmware requested", id="bios-guest"),
])
def test_domain_uefi_firmware(fake_root, xml, setup, status, text):
    base(fake_root)
    if setup in ("ovmf", "no-files"):
        ovmf(fake_root, files=setup == "ovmf")
    if setup == "opt-code":
        fake_root.write("/opt/CODE.fd", b"code")
    f = one(FW.uefi_firmware_missing, facts_for(fake_root), dom_of(xml))
    assert f.status.value == status, f.message
    assert text in f.message


def test_domain_manual_loader_template_from_qemu_conf_nvram_list(fake_root):
    base(fake_root, qemu_conf='nvram = [ "/opt/CODE.fd:/opt/VARS.fd" ]\n')
    fake_root.write("/opt/CODE.fd", b"c")
    fake_root.write("/opt/VARS.fd", b"v")
    xml = domain_xml(os_inner="<loader readonly='yes' type='pflash'>/opt/CODE.fd</loader>")
    f = one(FW.uefi_firmware_missing, facts_for(fake_root), dom_of(xml))
    assert f.status is Status.PASS and "qemu.conf nvram" in f.message


def test_domain_existing_nvram_file_needs_no_template(fake_root):
    base(fake_root)
    fake_root.write("/opt/CODE.fd", b"c")
    fake_root.write("/var/lib/libvirt/qemu/nvram/vm1_VARS.fd", b"v")
    xml = domain_xml(os_inner="<loader readonly='yes' type='pflash'>/opt/CODE.fd</loader>")
    assert one(FW.uefi_firmware_missing, facts_for(fake_root), dom_of(xml)).status is Status.PASS


def test_domain_firmware_checks_skip_offline(fake_root):
    base(fake_root)
    facts = facts_for(fake_root, offline=True)
    for chk in (FW.uefi_firmware_missing, FW.secure_boot_requires_smm):
        f = one(chk, facts, dom_of(EFI_Q35))
        assert f.status is Status.SKIP and "--offline" in f.message


# --------------------------------------------------------------------------- secure-boot-requires-smm

def test_host_without_smm_warns_when_q35_efi_would_pick_secure_boot(fake_root):
    base(fake_root)
    ovmf(fake_root)
    f = one(FW.secure_boot_requires_smm_host, facts_for(fake_root, smm=False))
    assert f.status is Status.FAIL and f.severity.value == "warning"
    assert "System Management Mode not supported by this hypervisor." in f.message
    assert f.evidence["default_q35_efi_choice"].endswith("40-edk2-x86_64-secure-enrolled.json")


@pytest.mark.parametrize("smm, firmware, status", [
    pytest.param(True, True, "pass", id="kvm-has-smm"),
    pytest.param(False, False, "pass", id="no-smm-no-secure-firmware"),
    pytest.param(None, True, "skip", id="not-x86"),
])
def test_host_smm_other_cases(fake_root, smm, firmware, status):
    base(fake_root)
    if firmware:
        ovmf(fake_root)
    assert one(FW.secure_boot_requires_smm_host, facts_for(fake_root, smm=smm)).status.value == status


def test_host_smm_skips_on_foreign_root(fake_root):
    base(fake_root)
    assert one(FW.secure_boot_requires_smm_host, facts_for(fake_root, kvm=False)).status is Status.SKIP


INSECURE = "<firmware><feature enabled='no' name='secure-boot'/><feature enabled='no' name='enrolled-keys'/></firmware>"


@pytest.mark.parametrize("xml, smm, status, text", [
    pytest.param(EFI_Q35, False, "fail", "System Management Mode not supported by this hypervisor.",
                 id="efi-q35-kvm-no-smm"),
    pytest.param(EFI_Q35, True, "pass", "KVM offers it", id="efi-q35-kvm-smm"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'", virt="qemu"), False, "pass", "TCG emulates it",
                 id="efi-q35-tcg"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'", os_inner=INSECURE), False, "pass", "no SMM needed",
                 id="efi-insecure-request"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'", machine="pc"), False, "pass", "60-edk2-x86_64.json",
                 id="efi-i440fx-gets-plain-ovmf"),
    pytest.param(domain_xml(os_inner="<loader readonly='yes' secure='yes' type='pflash'>"
                                     "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</loader>", machine="pc"),
                 True, "fail", "Secure boot is supported with q35 machine types only", id="secure-loader-on-pc"),
    pytest.param(domain_xml(os_inner="<loader readonly='yes' secure='yes' type='pflash'>"
                                     "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</loader>"),
                 True, "fail", "Secure boot requires SMM feature enabled", id="secure-loader-without-smm"),
    pytest.param(domain_xml(os_inner="<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>"),
                 False, "fail", "OVMF_CODE_4M.ms.fd is 40-edk2-x86_64-secure-enrolled.json (requires-smm)",
                 id="secboot-code-by-descriptor"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'", features="<acpi/><smm state='off'/>"), True, "fail",
                 "domain has SMM turned off but chosen firmware requires it", id="smm-off-with-secure-choice"),
    pytest.param(domain_xml(features=None), False, "pass", "no UEFI", id="bios"),
])
def test_domain_secure_boot_requires_smm(fake_root, xml, smm, status, text):
    base(fake_root)
    ovmf(fake_root)
    f = one(FW.secure_boot_requires_smm, facts_for(fake_root, smm=smm), dom_of(xml))
    assert f.status.value == status, f.message
    assert text in f.message


def _fix_plan(chk, facts, dom):
    f = one(chk, facts, dom)
    assert f.status is Status.FAIL
    return f, f.plan


def test_smm_fix_without_host_smm_asks_for_insecure_firmware_and_rechecks(fake_root):
    base(fake_root)
    ovmf(fake_root)
    facts = facts_for(fake_root, smm=False)
    xml = domain_xml(os_attrs=" firmware='efi'", features="<acpi/><smm state='on'/>")
    f, p = _fix_plan(FW.secure_boot_requires_smm, facts, dom_of(xml, active=True))
    assert p.auto.value == "unsafe" and "without secure boot" in p.summary
    assert any("next boot" in n for n in p.notes)
    new = p.actions[0].new_xml
    root = etree.fromstring(new)
    assert root.find("features/smm") is None
    assert {x.get("name"): x.get("enabled") for x in root.iterfind("os/firmware/feature")} == \
        {"secure-boot": "no", "enrolled-keys": "no"}
    diff = p.actions[0].preview(None)
    assert diff.startswith("--- a/domain/vm1.xml") and "<smm state='on'/>" in xml
    after = one(FW.secure_boot_requires_smm, facts_for(fake_root, smm=False), dom_of(new))
    assert after.status is Status.PASS, after.message


def test_smm_fix_manual_secure_loader_moves_to_plain_ovmf(fake_root):
    base(fake_root)
    ovmf(fake_root)
    xml = domain_xml(os_inner="<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
                              "</loader><nvram>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram>",
                     features="<acpi/><smm state='on'/>")
    f, p = _fix_plan(FW.secure_boot_requires_smm, facts_for(fake_root, smm=False), dom_of(xml))
    root = etree.fromstring(p.actions[0].new_xml)
    loader = root.find("os/loader")
    assert loader.text == "/usr/share/OVMF/OVMF_CODE_4M.fd" and loader.get("secure") is None
    assert root.find("os/nvram").get("template") == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    after = one(FW.secure_boot_requires_smm, facts_for(fake_root, smm=False), dom_of(p.actions[0].new_xml))
    assert after.status is Status.PASS, after.message


def test_smm_fix_with_host_smm_turns_smm_on(fake_root):
    base(fake_root)
    ovmf(fake_root)
    xml = domain_xml(os_inner="<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
                              "</loader>")
    f, p = _fix_plan(FW.secure_boot_requires_smm, facts_for(fake_root, smm=True), dom_of(xml))
    root = etree.fromstring(p.actions[0].new_xml)
    assert root.find("features/smm").get("state") == "on"
    assert one(FW.secure_boot_requires_smm, facts_for(fake_root, smm=True),
               dom_of(p.actions[0].new_xml)).status is Status.PASS


def test_fixers_refuse_undefined_xml(fake_root):
    base(fake_root)
    ovmf(fake_root)
    facts = facts_for(fake_root, smm=False)
    dom = dom_of(EFI_Q35, defined=False)
    f = one(FW.secure_boot_requires_smm, facts, dom)
    assert FW.secure_boot_smm_fix(facts, dom) is None


# --------------------------------------------------------------------------- uefi-requires-acpi / acpi-requires-uefi

PFLASH = "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"


@pytest.mark.parametrize("xml, status", [
    pytest.param(domain_xml(os_attrs=" firmware='efi'", features=None), "fail", id="efi-no-features"),
    pytest.param(domain_xml(os_inner=PFLASH, features="<apic/>"), "fail", id="pflash-no-acpi"),
    pytest.param(domain_xml(os_inner=PFLASH, arch="i686", features=""), "fail", id="i686-pflash"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'"), "pass", id="efi-with-acpi"),
    pytest.param(domain_xml(os_inner="<loader type='rom'>/usr/share/seabios/bios.bin</loader>", features=None),
                 "pass", id="rom-loader-is-bios"),
    pytest.param(domain_xml(features=None), "pass", id="bios-no-acpi"),
    pytest.param(domain_xml(os_attrs=" firmware='efi'", arch="aarch64", machine="virt", features=None),
                 "pass", id="aarch64-efi-no-acpi"),
])
def test_uefi_requires_acpi(fake_root, xml, status):
    f = one(FW.uefi_requires_acpi, HostFacts(root=str(fake_root), offline=True), dom_of(xml))
    assert f.status.value == status, f.message
    if status == "fail":
        assert "UEFI requires ACPI on this architecture" in f.message


@pytest.mark.parametrize("features", [None, "<apic/>", ""])
def test_uefi_requires_acpi_fix_adds_acpi(fake_root, features):
    base(fake_root)
    facts = facts_for(fake_root)
    xml = domain_xml(os_inner=PFLASH, features=features)
    f, p = _fix_plan(FW.uefi_requires_acpi, facts, dom_of(xml))
    assert p.auto.value == "unsafe"
    new = etree.fromstring(p.actions[0].new_xml)
    assert new.find("features/acpi") is not None
    if features == "<apic/>":
        assert new.find("features/apic") is not None
    assert one(FW.uefi_requires_acpi, facts, dom_of(p.actions[0].new_xml)).status is Status.PASS


@pytest.mark.parametrize("xml, status", [
    pytest.param(domain_xml(arch="aarch64", machine="virt"), "fail", id="aarch64-acpi-no-uefi"),
    pytest.param(domain_xml(arch="aarch64", machine="virt", os_attrs=" firmware='efi'"), "pass", id="aarch64-efi"),
    pytest.param(domain_xml(arch="aarch64", machine="virt",
                            os_inner="<loader readonly='yes' type='pflash'>/usr/share/AAVMF/AAVMF_CODE.fd</loader>"),
                 "pass", id="aarch64-pflash"),
    pytest.param(domain_xml(arch="aarch64", machine="virt", features=""), "pass", id="aarch64-no-acpi"),
    pytest.param(domain_xml(), "pass", id="x86-acpi-bios"),
])
def test_acpi_requires_uefi(fake_root, xml, status):
    f = one(FW.acpi_requires_uefi, HostFacts(root=str(fake_root), offline=True), dom_of(xml))
    assert f.status.value == status, f.message
    if status == "fail":
        assert "ACPI requires UEFI on this architecture" in f.message


def test_acpi_requires_uefi_fix_turns_acpi_off_without_aavmf_and_uses_uefi_with_it(fake_root):
    base(fake_root)
    xml = domain_xml(arch="aarch64", machine="virt", features="<acpi/><gic version='3'/>")
    facts = facts_for(fake_root)
    _, p = _fix_plan(FW.acpi_requires_uefi, facts, dom_of(xml))
    root = etree.fromstring(p.actions[0].new_xml)
    assert root.find("features/acpi") is None and root.find("features/gic") is not None
    assert "ACPI off" in p.summary
    fake_root.write("/usr/share/qemu/firmware/60-edk2-aarch64.json",
                    descriptor("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd", ["virt-*"],
                               arch="aarch64"))
    facts = facts_for(fake_root)
    _, p = _fix_plan(FW.acpi_requires_uefi, facts, dom_of(xml))
    root = etree.fromstring(p.actions[0].new_xml)
    assert root.find("os").get("firmware") == "efi" and root.find("features/acpi") is not None
    assert one(FW.acpi_requires_uefi, facts, dom_of(p.actions[0].new_xml)).status is Status.PASS


# --------------------------------------------------------------------------- the libvirt corpus

@pytest.mark.skipif(not os.path.isdir(CORPUS), reason=f"{CORPUS} is absent")
def test_corpus_offline_domain_checks_flag_the_two_acpi_cases_and_nothing_else():
    from virtdoctor.checks import emulator as EM

    checks = [c for c in FW.virtdoctor_checks() + EM.virtdoctor_checks() if c.scope == "domain"]
    facts = HostFacts(offline=True)
    errors, crashed, flagged = [], [], {}
    files = sorted(glob.glob(f"{CORPUS}/*.xml"))
    assert len(files) == 1070
    for path in files:
        stem = os.path.basename(path)[:-4]
        has_err = bool(glob.glob(f"{CORPUS}/{stem}.err") + glob.glob(f"{CORPUS}/{stem}.*.err"))
        with open(path, "rb") as fh:
            dom = parse_domain(fh.read(), path)
        for chk in checks:
            for f in engine.run_check(chk, facts, dom):
                if f.status is Status.ERROR:
                    crashed.append((stem, f.id, f.message))
                if f.status is Status.FAIL:
                    flagged.setdefault(stem, set()).add(f.id)
                    if f.severity.value == "error" and not has_err:
                        errors.append((stem, f.id, f.message))
    assert crashed == []
    assert "uefi-requires-acpi" in flagged["firmware-manual-efi-noacpi-q35"]
    assert "acpi-requires-uefi" in flagged["firmware-manual-noefi-acpi-aarch64"]
    assert errors == []


class _FakeDomain:
    def __init__(self, conn, name):
        self.conn, self.name = conn, name

    def XMLDesc(self, flags):
        import libvirt
        return self.conn.secure_xml if flags & libvirt.VIR_DOMAIN_XML_SECURE else self.conn.public_xml


class _FakeConn:
    """The calls the redefinition makes: lookupByName, XMLDesc, defineXMLFlags."""

    def __init__(self, secure_xml, public_xml):
        self.secure_xml, self.public_xml, self.defined = secure_xml, public_xml, []

    def lookupByName(self, name):
        return _FakeDomain(self, name)

    def defineXMLFlags(self, xml, flags):
        self.defined.append(xml)

    def defineXML(self, xml):
        self.defined.append(xml)


def test_acpi_fix_is_reapplied_to_the_xml_with_secrets(fake_root, tmp_path):
    from virtdoctor import remedy

    base(fake_root)
    vnc_public = "<graphics type='vnc' port='-1'/>"
    vnc_secret = "<graphics type='vnc' port='-1' passwd='s3cret'/>"
    public = domain_xml(os_inner=PFLASH, features=None, devices=vnc_public)
    secure = domain_xml(os_inner=PFLASH, features=None, devices=vnc_secret)
    facts = facts_for(fake_root)
    dom = dom_of(public)
    f, p = _fix_plan(FW.uefi_requires_acpi, facts, dom)
    assert "s3cret" not in p.actions[0].new_xml  # the diff shows what the checks saw
    conn = _FakeConn(secure, public)
    env = remedy.Env(root=str(fake_root), libvirt_open=lambda: conn)
    out = remedy.apply_plan(p, env, f.id, f.subject, lambda: (True, ""), str(tmp_path / "backups"))
    assert out.status == "fixed", out.detail
    [defined] = conn.defined
    root = etree.fromstring(defined)
    assert root.find("features/acpi") is not None
    assert root.find("devices/graphics").get("passwd") == "s3cret"
