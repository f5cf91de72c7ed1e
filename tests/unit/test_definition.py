"""checks/definition.py: boot-order-conflict, root-disk-order, uefi-cdrom-source-lost,
nvram-undefine, transient-undefine. Healthy and broken twins of small hand-written XMLs; the
boot-order fix applied with the remedy engine to an XML file (preflight) and to a domain on
libvirt's test driver, where libvirt itself parses and validates the result."""
from __future__ import annotations

import pytest
from lxml import etree

from virtdoctor import domxml, engine, remedy
from virtdoctor.checks import definition as D
from virtdoctor.facts import HostFacts
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.model import Auto, Severity, Status

BOOT_CONFLICT = "per-device boot elements cannot be used together with os/boot elements"


def xml(name="vm", *, os_extra="<boot dev='hd'/>", devices="", os_attrs="", machine="pc"):
    return (f"<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='KiB'>65536</memory>\n"
            f"  <vcpu>1</vcpu>\n  <os{os_attrs}>\n    <type arch='x86_64' machine='{machine}'>hvm</type>\n"
            f"    {os_extra}\n  </os>\n  <features><acpi/></features>\n  <devices>\n"
            f"    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n{devices}  </devices>\n</domain>\n")


DISK_VDA = ("    <disk type='file' device='disk'>\n      <source file='/var/lib/libvirt/images/a.qcow2'/>\n"
            "      <target dev='vda' bus='virtio'/>\n{boot}    </disk>\n")
DISK_VDB = ("    <disk type='file' device='disk'>\n      <source file='/var/lib/libvirt/images/b.qcow2'/>\n"
            "      <target dev='vdb' bus='virtio'/>\n{boot}    </disk>\n")
CDROM = ("    <disk type='file' device='cdrom'>\n{source}      <target dev='sda' bus='sata'/>\n"
         "      <readonly/>\n{boot}    </disk>\n")
NIC = ("    <interface type='network'>\n      <mac address='52:54:00:11:22:33'/>\n"
       "      <source network='default'/>\n      <model type='virtio'/>\n{boot}    </interface>\n")


def boot(n):
    return f"      <boot order='{n}'/>\n"


def facts(tmp_path, **kw):
    return HostFacts(root=str(tmp_path), uri="qemu:///system", offline=True, **kw)


def results(chk, f, text, info=None, source="vm.xml"):
    dom = domxml.parse_domain(text, source, info=info)
    return engine.run_check(chk, f, dom)


def one(chk, f, text, info=None):
    [r] = results(chk, f, text, info)
    return r


# -- boot-order-conflict ---------------------------------------------------------------
@pytest.mark.parametrize("text, status", [
    pytest.param(xml(devices=DISK_VDA.format(boot="")), Status.PASS, id="os-boot-only"),
    pytest.param(xml(os_extra="", devices=DISK_VDA.format(boot=boot(1))), Status.PASS, id="per-device-only"),
    pytest.param(xml(os_extra="", devices=DISK_VDA.format(boot="")), Status.PASS, id="neither"),
    pytest.param(xml(devices=DISK_VDA.format(boot=boot(1))), Status.FAIL, id="os-boot-and-disk-order"),
    pytest.param(xml(devices=DISK_VDA.format(boot="") + NIC.format(boot=boot(1))), Status.FAIL,
                 id="os-boot-and-nic-order"),
])
def test_boot_order_conflict(tmp_path, text, status):
    r = one(D.boot_order_conflict, facts(tmp_path), text)
    assert r.status is status
    if status is Status.FAIL:
        assert BOOT_CONFLICT in r.message and r.severity is Severity.ERROR


def test_merged_boot_order_keeps_explicit_first_then_os_boot_classes():
    text = xml(os_extra="<boot dev='cdrom'/><boot dev='hd'/><boot dev='network'/>",
               devices=DISK_VDB.format(boot="") + DISK_VDA.format(boot="")
               + CDROM.format(source="", boot="") + NIC.format(boot=boot(1)))
    dom = domxml.parse_domain(text, "vm.xml")
    order = D.merged_boot_order(dom)
    labels = [(e.tag, e.find("target").get("dev") if e.find("target") is not None else None) for e in order]
    # the NIC carried the explicit order; then cdrom, then the first disk by target (vda, not vdb)
    assert labels == [("interface", None), ("disk", "sda"), ("disk", "vda")]


def test_boot_order_fix_rewrites_an_xml_file_that_libvirt_then_accepts(tmp_path):
    path = tmp_path / "vm.xml"
    text = xml(name="bootfix", os_extra="<boot dev='hd'/><boot dev='cdrom'/>",
               devices=DISK_VDA.format(boot="") + CDROM.format(source="", boot=boot(1)))
    path.write_text(text)
    f = facts(tmp_path)
    dom = domxml.parse_domain(text, str(path))
    dom.extra["file"] = str(path)
    [finding] = engine.run_check(D.boot_order_conflict, f, dom)
    assert finding.status is Status.FAIL
    p = finding.plan
    assert p.auto is Auto.UNSAFE and p.commands == [f"write {path} ({len(p.actions[0].content.splitlines())} lines)"]
    diff = p.diff(remedy.Env(root="/"))
    assert any(l.startswith("-") and "<boot dev='hd'/>" in l for l in diff.splitlines())

    def recheck():
        d2 = domxml.parse_domain(path.read_text(), str(path))
        [r] = engine.run_check(D.boot_order_conflict, f, d2)
        return r.status is Status.PASS, r.message

    out = remedy.apply_plan(p, remedy.Env(root="/"), finding.id, finding.subject, recheck, str(tmp_path / "bk"))
    assert out.status == "fixed", out.detail
    new = etree.fromstring(path.read_bytes())
    assert new.find("os/boot") is None
    orders = {b.getparent().find("target").get("dev"): b.get("order") for b in new.iter("boot")}
    assert orders == {"sda": "1", "vda": "2"}  # the explicit cdrom first, then os/boot's hd
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError, match="per-device boot elements"):
            conn.defineXML(text)
        d = conn.defineXML(path.read_text())  # libvirt accepts the fixed XML
        d.undefine()
    finally:
        conn.close()


def test_boot_order_fix_on_stdin_is_manual(tmp_path):
    text = xml(devices=DISK_VDA.format(boot=boot(1)))
    dom = domxml.parse_domain(text, "-", subject="xml:-")
    [finding] = engine.run_check(D.boot_order_conflict, facts(tmp_path), dom)
    assert finding.fix.auto is Auto.MANUAL and "Drop <os><boot>" in finding.fix.summary


# -- root-disk-order ---------------------------------------------------------------------
@pytest.mark.parametrize("devices, status", [
    pytest.param(DISK_VDA.format(boot="") + DISK_VDB.format(boot=""), Status.PASS, id="no-boot-order"),
    pytest.param(DISK_VDA.format(boot=boot(1)) + DISK_VDB.format(boot=boot(2)), Status.PASS, id="vda-boots"),
    pytest.param(DISK_VDA.format(boot="") + DISK_VDB.format(boot=boot(1)), Status.FAIL, id="vdb-boots-vda-first"),
    pytest.param(DISK_VDB.format(boot=boot(1)) + DISK_VDA.format(boot=boot(2)), Status.FAIL,
                 id="vdb-listed-first-but-vda-enumerates-first"),
    pytest.param(CDROM.format(source="", boot=boot(1)) + DISK_VDA.format(boot=boot(2)), Status.PASS,
                 id="cdrom-first-is-not-a-disk"),
])
def test_root_disk_order(tmp_path, devices, status):
    r = one(D.root_disk_order, facts(tmp_path), xml(os_extra="", devices=devices))
    assert r.status is status
    if status is Status.FAIL:
        assert r.severity is Severity.WARNING and "vdb" in r.message and r.fix.auto is Auto.MANUAL


# -- uefi-cdrom-source-lost ------------------------------------------------------------
ISO = "      <source file='/isos/debian.iso'/>\n"


@pytest.mark.parametrize("os_attrs, os_extra, devices, status", [
    pytest.param(" firmware='efi'", "", CDROM.format(source="", boot=boot(1)), Status.FAIL, id="efi-empty-cdrom-only"),
    pytest.param(" firmware='efi'", "", CDROM.format(source=ISO, boot=boot(1)), Status.PASS, id="efi-cdrom-with-iso"),
    pytest.param(" firmware='efi'", "", CDROM.format(source="", boot=boot(1)) + DISK_VDA.format(boot=boot(2)),
                 Status.PASS, id="efi-disk-boots-too"),
    pytest.param("", "<boot dev='cdrom'/>", CDROM.format(source="", boot=""), Status.PASS, id="bios-not-concerned"),
    pytest.param(" firmware='efi'", "<boot dev='cdrom'/>", CDROM.format(source="", boot=""), Status.FAIL,
                 id="efi-os-boot-cdrom-empty"),
    pytest.param("", "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>",
                 CDROM.format(source="", boot=boot(1)), Status.FAIL, id="manual-ovmf-loader"),
])
def test_uefi_cdrom_source_lost(tmp_path, os_attrs, os_extra, devices, status):
    r = one(D.uefi_cdrom_source_lost, facts(tmp_path), xml(os_attrs=os_attrs, os_extra=os_extra, devices=devices))
    assert r.status is status


# -- nvram-undefine and transient-undefine --------------------------------------------
def info(text, **kw):
    name = etree.fromstring(text.encode()).findtext("name")
    return DomainInfo(name=name, uuid="00000000-0000-0000-0000-000000000001", xml=text, **kw)


def test_nvram_undefine(fake_root, tmp_path):
    efi = xml(name="efi1", os_attrs=" firmware='efi'", os_extra="")
    f = facts(fake_root.base)
    assert one(D.nvram_undefine, f, efi).status is Status.PASS  # an XML file: nothing defined yet
    assert one(D.nvram_undefine, f, efi, info(efi)).status is Status.PASS  # defined, never started: no file
    fake_root.write("/var/lib/libvirt/qemu/nvram/efi1_VARS.fd", b"\0" * 16)
    r = one(D.nvram_undefine, f, efi, info(efi))
    assert r.status is Status.FAIL and r.severity is Severity.INFO
    assert "cannot undefine domain with nvram" in r.message and r.fix.auto is Auto.MANUAL
    assert "--nvram" in r.fix.summary
    explicit = xml(name="efi2", os_extra="<loader readonly='yes' type='pflash'>/x/OVMF_CODE.fd</loader>"
                                         "<nvram>/srv/vars/efi2.fd</nvram>")
    assert one(D.nvram_undefine, f, explicit, info(explicit)).status is Status.PASS
    fake_root.write("/srv/vars/efi2.fd", b"\0")
    assert one(D.nvram_undefine, f, explicit, info(explicit)).status is Status.FAIL
    bios = xml(name="bios")
    assert one(D.nvram_undefine, f, bios, info(bios)).status is Status.PASS


def test_transient_undefine(tmp_path):
    text = xml(name="t1")
    f = facts(tmp_path)
    assert one(D.transient_undefine, f, text).status is Status.PASS
    assert one(D.transient_undefine, f, text, info(text, persistent=True)).status is Status.PASS
    r = one(D.transient_undefine, f, text, info(text, persistent=False, active=True))
    assert r.status is Status.FAIL and r.severity is Severity.WARNING
    assert "cannot undefine transient domain" in r.message and "virsh destroy t1" in r.fix.summary


# -- a fix on a defined domain: DefineDomain, diff, next-boot note ----------------------
def test_redefine_plan_for_a_running_domain_says_next_boot(tmp_path):
    text = xml(name="run1", devices=DISK_VDA.format(boot=""))
    dom = domxml.parse_domain(text, "domain run1", subject="domain:run1", info=info(text, active=True))

    def drop_os_boot(copy):
        domxml.remove_element(copy.root.find("os/boot"))
        return "drop os boot"

    p = D.redefine_plan(dom, drop_os_boot)
    assert p.auto is Auto.UNSAFE and any("next boot" in n for n in p.notes) and p.summary == "drop os boot"
    assert "-    <boot dev='hd'/>" in p.diff(remedy.Env(root=str(tmp_path)))
    assert dom.root.find("os/boot") is not None  # the domain itself is untouched


def test_a_redefinition_keeps_the_secrets_the_checks_never_saw(tmp_path):
    """The fix is planned from XML without secrets (read-only connection) but applied to the
    XML with them: a VNC password survives the redefinition on libvirt's test driver."""
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open("test:///default")
    text = xml(name="secret1", os_extra="", devices=DISK_VDA.format(boot="")
               + "    <graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>\n")
    d = conn.defineXML(text)
    try:
        seen = d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "s3cret" not in seen
        dom = domxml.from_info(DomainInfo(name="secret1", uuid=d.UUIDString(), xml=seen))

        def add_os_boot(copy):
            copy.root.find("os").append(etree.Element("boot", dev="cdrom"))
            return "boot from cdrom"

        p = D.redefine_plan(dom, add_os_boot)
        out = remedy.apply_plan(p, remedy.Env(root=str(tmp_path), libvirt_open=lambda: conn), "x", dom.subject,
                                lambda: (True, ""), str(tmp_path / "bk"))
        assert out.status == "fixed", out.detail
        now = conn.lookupByName("secret1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        assert "passwd='s3cret'" in now and "<boot dev='cdrom'/>" in now
    finally:
        d.undefine()
        conn.close()
