"""checks/guest.py: aarch64-host-model, vcpus-over-255-need-iommu-eim, clock-offset-mismatch,
windows-tablet, usb-controller-model; virtdoctor/facts/osinfo.py.

The helpers at the top are shared with test_display.py and test_nics.py: a domain XML
builder, facts over a fake root with recorded libvirt XML (domcapabilities recorded from
this host, tests/roots/guest-*), and applying a fix with the remedy engine against
libvirt's test driver (test:///default), where libvirt itself parses and validates the
redefined XML."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from lxml import etree

from virtdoctor import domxml, engine, remedy
from virtdoctor.facts import HostFacts
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.model import Status

ROOTS = Path(__file__).resolve().parent.parent / "roots"
DOMCAPS_Q35 = (ROOTS / "guest-domcaps-x86_64-q35-kvm.xml").read_text()  # virsh domcapabilities, this host
CAPS_X86 = (ROOTS / "guest-capabilities-x86_64.xml").read_text()        # virsh capabilities, this host
WIN10 = "http://microsoft.com/win/10"
_names = itertools.count(1)


def domcaps_without(xpath_value: str, enum: str, text: str = DOMCAPS_Q35) -> str:
    """The recorded domcapabilities with one enum value taken out (a QEMU built
    without that feature), e.g. domcaps_without("spice", "graphics/enum[@name='type']")."""
    root = etree.fromstring(text.encode())
    for v in root.iterfind(f"devices/{enum}/value"):
        if v.text == xpath_value:
            v.getparent().remove(v)
    return etree.tostring(root, encoding="unicode")


def domain_xml(name="vm", *, virt="kvm", arch="x86_64", machine="q35", vcpus=1, os_id=None, clock=None,
               cpu="", features="", os_extra="", devices="", os_attrs="") -> str:
    meta = ""
    if os_id:
        meta = ("  <metadata>\n    <libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>\n"
                f"      <libosinfo:os id='{os_id}'/>\n    </libosinfo:libosinfo>\n  </metadata>\n")
    clock_xml = f"  <clock offset='{clock}'/>\n" if clock else ""
    emulator = "/usr/bin/qemu-system-x86_64" if arch in ("x86_64", "i686") else f"/usr/bin/qemu-system-{arch}"
    return (f"<domain type='{virt}'>\n  <name>{name}</name>\n{meta}  <memory unit='KiB'>65536</memory>\n"
            f"  <vcpu placement='static'>{vcpus}</vcpu>\n"
            f"  <os{os_attrs}>\n    <type arch='{arch}' machine='{machine}'>hvm</type>\n{os_extra}  </os>\n"
            f"{features}{cpu}{clock_xml}"
            f"  <devices>\n    <emulator>{emulator}</emulator>\n{devices}  </devices>\n</domain>\n")


def facts_for(root, *, domains=(), domcaps=DOMCAPS_Q35, caps=CAPS_X86, offline=False, error=None) -> HostFacts:
    if offline:
        return HostFacts(root=str(root), uri="qemu:///system", offline=True)
    infos = []
    for xml in domains:
        if isinstance(xml, DomainInfo):
            infos.append(xml)
        else:
            name = etree.fromstring(xml.encode()).findtext("name")
            infos.append(DomainInfo(name=name, uuid=f"00000000-0000-0000-0000-{next(_names):012d}", xml=xml))
    return HostFacts(root=str(root), uri="qemu:///system",
                     libvirt_facts=RecordedLibvirt(capabilities=caps, domcapabilities=domcaps, domains=infos,
                                                   error=error))


def run(chk, facts, xml, source="vm.xml"):
    dom = domxml.parse_domain(xml, source)
    return engine.run_check(chk, facts, dom)


def one(chk, facts, xml):
    [f] = run(chk, facts, xml)
    return f


def osinfo_db(fake_root) -> None:
    """A small osinfo-db: Windows 10 (winnt), Fedora 38 (linux), and an
    Ubuntu derivative with no family of its own."""
    fake_root.write("/usr/share/osinfo/os/microsoft.com/win-10.xml",
                    '<?xml version="1.0"?>\n<libosinfo version="0.0.1">\n  <os id="http://microsoft.com/win/10">\n'
                    '    <short-id>win10</short-id>\n    <name>Microsoft Windows 10</name>\n'
                    '    <family>winnt</family>\n    <distro>win</distro>\n'
                    '    <media><volume-id>X</volume-id><family>not-this-one</family></media>\n  </os>\n</libosinfo>\n')
    fake_root.write("/usr/share/osinfo/os/fedoraproject.org/fedora-38.xml",
                    '<libosinfo><os id="http://fedoraproject.org/fedora/38"><short-id>fedora38</short-id>'
                    '<name>Fedora Linux 38</name><family>linux</family><distro>fedora</distro></os></libosinfo>')
    fake_root.write("/usr/share/osinfo/os/ubuntu.com/ubuntu-22.04.xml",
                    '<libosinfo><os id="http://ubuntu.com/ubuntu/22.04"><short-id>ubuntu22.04</short-id>'
                    '<name>Ubuntu 22.04 LTS</name><family>linux</family></os></libosinfo>')
    fake_root.write("/usr/share/osinfo/os/example.org/odd-name.xml",
                    '<libosinfo><os id="http://example.org/derived/1"><short-id>derived1</short-id>'
                    '<name>Derived 1</name><derives-from id="http://ubuntu.com/ubuntu/22.04"/></os></libosinfo>')


# -- fixes against libvirt's test driver -------------------------------------------------
def libvirt_test_conn():
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    return libvirt.open("test:///default")


def define(conn, xml: str) -> DomainInfo:
    import libvirt

    dom = conn.defineXML(xml)
    return DomainInfo(name=dom.name(), uuid=dom.UUIDString(),
                      xml=dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def fix_on_test_driver(chk, conn, tmp_path, name, make_facts, *, plan_only=False):
    """Run `chk` on defined domain `name`, build its plan, apply it with the
    remedy engine (backup, redefine, re-check) and return (plan, outcome,
    new inactive XML)."""
    import libvirt

    def facts_now():
        infos = [define_info(conn, d) for d in conn.listAllDomains()]
        return make_facts(infos), next(i for i in infos if i.name == name)

    facts, info = facts_now()
    dom = domxml.from_info(info)
    failing = [f for f in engine.run_check(chk, facts, dom) if f.status is Status.FAIL]
    assert failing, "the check should fail before the fix"
    p = failing[0].plan
    if plan_only or p is None:
        return p, None, None

    def recheck():
        fresh, finfo = facts_now()
        results = engine.run_check(chk, fresh, domxml.from_info(finfo))
        bad = [r for r in results if r.status is not Status.PASS]
        return (not bad, bad[0].message if bad else "")

    env = remedy.Env(root=str(tmp_path), libvirt_open=lambda: conn)
    out = remedy.apply_plan(p, env, chk.slug, dom.subject, recheck, str(tmp_path / "backups"))
    new = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return p, out, new


def define_info(conn, dom) -> DomainInfo:
    import libvirt

    return DomainInfo(name=dom.name(), uuid=dom.UUIDString(), xml=dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                      active=bool(dom.isActive()))


# =========================================================================== the tests
from virtdoctor.checks import guest  # noqa: E402
from virtdoctor.facts import osinfo  # noqa: E402
from virtdoctor.model import Severity  # noqa: E402

AARCH64_CAPS = CAPS_X86.replace("<arch>x86_64</arch>", "<arch>aarch64</arch>", 1)
HOST_MODEL_NO = DOMCAPS_Q35.replace("<mode name='host-model' supported='yes'>",
                                    "<mode name='host-model' supported='no'>")


# -- osinfo facts ------------------------------------------------------------------------
def test_osinfo_family_direct_derived_and_missing(fake_root):
    osinfo_db(fake_root)
    facts = facts_for(fake_root, offline=True)
    assert osinfo.osinfo_installed(facts)
    assert osinfo.os_family(facts, WIN10)[0] == "winnt"  # the os-level family, not the media's
    fam, chain = osinfo.os_family(facts, "http://example.org/derived/1")  # file name does not follow the id
    assert fam == "linux" and chain == ["http://example.org/derived/1", "http://ubuntu.com/ubuntu/22.04"]
    assert osinfo.os_family(facts, "http://nowhere.org/x/1")[0] is None
    assert osinfo.os_entry(facts, WIN10).name == "Microsoft Windows 10"


def test_osinfo_absent_and_unparsable(fake_root):
    facts = facts_for(fake_root, offline=True)
    assert not osinfo.osinfo_installed(facts)
    assert osinfo.os_entry(facts, WIN10) is None
    fake_root.write("/usr/share/osinfo/os/microsoft.com/win-10.xml", "<libosinfo><os id=")
    facts = facts_for(fake_root, offline=True)
    assert osinfo.os_entry(facts, WIN10) is None


def test_osinfo_index_is_cached_per_facts(fake_root):
    osinfo_db(fake_root)
    facts = facts_for(fake_root, offline=True)
    assert osinfo.os_family(facts, WIN10)[0] == "winnt"
    fake_root.path("/usr/share/osinfo/os/microsoft.com/win-10.xml").unlink()
    assert osinfo.os_family(facts, WIN10)[0] == "winnt"  # same run: cached
    assert osinfo.os_family(facts_for(fake_root, offline=True), WIN10)[0] is None  # a new run reads again


def test_osinfo_real_database_when_installed():
    facts = HostFacts(offline=True)
    if not osinfo.osinfo_installed(facts):
        pytest.skip("osinfo-db is not installed on this machine")
    assert osinfo.os_family(facts, WIN10)[0] == "winnt"
    assert osinfo.os_family(facts, "http://debian.org/debian/11")[0] == "linux"


def test_guest_os_falls_back_to_the_id_when_the_database_lacks_it(fake_root):
    osinfo_db(fake_root)  # no Debian in it, like osinfo-db 20221203 and Debian 12
    kind, evidence = guest.guest_os(facts_for(fake_root, offline=True),
                                    domxml.parse_domain(domain_xml(os_id="http://debian.org/debian/12"), "x"))
    assert kind == "linux" and evidence["source"] == "os id"


# -- aarch64-host-model ------------------------------------------------------------------------
HM = "  <cpu mode='host-model' check='partial'>\n    <model fallback='allow'/>\n  </cpu>\n"


@pytest.mark.parametrize("xml, caps, domcaps, status", [
    pytest.param(domain_xml(arch="aarch64", machine="virt", cpu=HM), AARCH64_CAPS, None, Status.FAIL,
                 id="aarch64-guest-host-model"),
    pytest.param(domain_xml(arch="aarch64", machine="virt", cpu=HM.replace("host-model", "host-passthrough")),
                 AARCH64_CAPS, None, Status.PASS, id="aarch64-host-passthrough"),
    pytest.param(domain_xml(cpu=HM), AARCH64_CAPS, None, Status.FAIL, id="x86-guest-on-aarch64-host"),
    pytest.param(domain_xml(cpu=HM), CAPS_X86, DOMCAPS_Q35, Status.PASS, id="x86-host-model-offered"),
    pytest.param(domain_xml(cpu=HM), CAPS_X86, HOST_MODEL_NO, Status.FAIL, id="domcaps-say-no"),
    pytest.param(domain_xml(arch="aarch64", machine="virt"), AARCH64_CAPS, None, Status.PASS, id="no-cpu-element"),
])
def test_aarch64_host_model(fake_root, xml, caps, domcaps, status):
    f = one(guest.aarch64_host_model, facts_for(fake_root, caps=caps, domcaps=domcaps), xml)
    assert f.status is status, f.message
    if status is Status.FAIL:
        assert "is not supported by hypervisor" in f.message


def test_aarch64_host_model_offline_uses_the_guest_arch(fake_root):
    offline = facts_for(fake_root, offline=True)
    f = one(guest.aarch64_host_model, offline, domain_xml(arch="aarch64", machine="virt", cpu=HM))
    assert f.status is Status.FAIL
    assert "CPU mode 'host-model' for aarch64 kvm domain on aarch64 host is not supported by hypervisor" in f.message
    assert one(guest.aarch64_host_model, offline, domain_xml(cpu=HM)).status is Status.PASS


@pytest.mark.parametrize("virt, mode", [("kvm", "host-passthrough"), ("qemu", "maximum")])
def test_aarch64_host_model_fix(fake_root, tmp_path, virt, mode):
    conn = libvirt_test_conn()
    name = unique("hm")
    define(conn, domain_xml(name, virt=virt, arch="aarch64", machine="virt", cpu=HM))
    p, out, new = fix_on_test_driver(guest.aarch64_host_model, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, caps=AARCH64_CAPS, domcaps=None,
                                                             domains=infos))
    assert p.auto.value == "unsafe" and "host-model" in p.diff(remedy.Env())
    assert out.status == "fixed", out.detail
    cpu = etree.fromstring(new.encode()).find("cpu")
    assert cpu.get("mode") == mode and cpu.find("model") is None


# -- vcpus-over-255-need-iommu-eim --------------------------------------------------------------
IOMMU = ("    <iommu model='intel'>\n      <driver intremap='on' eim='on'/>\n    </iommu>\n")
IOAPIC = "  <features>\n    <acpi/>\n    <ioapic driver='qemu'/>\n  </features>\n"


@pytest.mark.parametrize("xml, status, text", [
    pytest.param(domain_xml(vcpus=256), Status.FAIL, "more than 255 vCPUs require extended interrupt mode "
                 "enabled on the iommu device", id="q35-256-bare"),
    pytest.param(domain_xml(vcpus=288, features=IOAPIC, devices=IOMMU), Status.PASS, "", id="q35-288-complete"),
    pytest.param(domain_xml(vcpus=256, devices=IOMMU), Status.FAIL, "ioapic", id="no-split-ioapic"),
    pytest.param(domain_xml(vcpus=256, features=IOAPIC, devices=IOMMU.replace(" eim='on'", "")), Status.FAIL,
                 "eim='on'", id="no-eim"),
    pytest.param(domain_xml(vcpus=256, features=IOAPIC, devices=IOMMU.replace("intremap='on' ", "")),
                 Status.FAIL, "intremap", id="no-intremap"),
    pytest.param(domain_xml(vcpus=256, machine="pc-i440fx-7.2"), Status.FAIL,
                 "more than 255 vCPUs are only supported on q35-based machine types", id="i440fx"),
    pytest.param(domain_xml(vcpus=255), Status.PASS, "", id="exactly-255"),
    pytest.param(domain_xml(vcpus=300, arch="aarch64", machine="virt"), Status.PASS, "", id="not-x86"),
])
def test_vcpus_over_255(fake_root, xml, status, text):
    f = one(guest.vcpus_over_255_need_iommu_eim, facts_for(fake_root, offline=True), xml)
    assert f.status is status, f.message
    assert text in f.message


def test_vcpus_over_255_counts_the_maximum_not_current(fake_root):
    xml = domain_xml(vcpus=1).replace("<vcpu placement='static'>1</vcpu>",
                                      "<vcpu placement='static' current='4'>300</vcpu>")
    assert one(guest.vcpus_over_255_need_iommu_eim, facts_for(fake_root, offline=True), xml).status is Status.FAIL


def test_vcpus_over_255_fix_adds_iommu_and_ioapic(fake_root, tmp_path):
    conn = libvirt_test_conn()
    name = unique("vcpu")
    define(conn, domain_xml(name, vcpus=256))
    p, out, new = fix_on_test_driver(guest.vcpus_over_255_need_iommu_eim, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos))
    assert out.status == "fixed", out.detail
    root = etree.fromstring(new.encode())
    assert root.find("devices/iommu/driver").attrib == {"intremap": "on", "eim": "on"}
    assert root.find("features/ioapic").get("driver") == "qemu"


def test_vcpus_over_255_on_i440fx_is_manual(fake_root):
    dom = domxml.parse_domain(domain_xml(vcpus=256, machine="pc"), "x.xml")
    p = guest.add_intel_iommu_eim(facts_for(fake_root, offline=True), dom)
    assert p.auto.value == "manual" and not p.actions and "q35" in p.summary


# -- guest OS and clock-offset-mismatch --------------------------------------------------------------
@pytest.mark.parametrize("os_id, clock, db, status, source", [
    pytest.param(WIN10, "utc", True, Status.FAIL, "osinfo-db", id="windows-utc"),
    pytest.param(WIN10, None, True, Status.FAIL, "osinfo-db", id="windows-default-utc"),
    pytest.param(WIN10, "localtime", True, Status.PASS, "osinfo-db", id="windows-localtime"),
    pytest.param(WIN10, "utc", False, Status.FAIL, "os id (no osinfo-db)", id="windows-utc-no-db"),
    pytest.param("http://fedoraproject.org/fedora/38", "localtime", True, Status.FAIL, "osinfo-db",
                 id="linux-localtime"),
    pytest.param("http://fedoraproject.org/fedora/38", "utc", True, Status.PASS, "osinfo-db", id="linux-utc"),
    pytest.param("http://example.org/derived/1", "localtime", True, Status.FAIL, "osinfo-db",
                 id="derived-linux-localtime"),
    pytest.param("http://example.org/derived/1", "localtime", False, Status.SKIP, "", id="unknown-id-no-db"),
    pytest.param("http://freebsd.org/freebsd/13.0", "localtime", False, Status.SKIP, "", id="bsd-unknown"),
    pytest.param(None, "localtime", True, Status.SKIP, "", id="no-metadata"),
    pytest.param(WIN10, "timezone", True, Status.PASS, "osinfo-db", id="explicit-timezone"),
])
def test_clock_offset_mismatch(fake_root, os_id, clock, db, status, source):
    if db:
        osinfo_db(fake_root)
    xml = domain_xml(os_id=os_id, clock=clock)
    if clock == "timezone":
        xml = xml.replace("offset='timezone'", "offset='timezone' timezone='Europe/Paris'")
    f = one(guest.clock_offset_mismatch, facts_for(fake_root, offline=True), xml)
    assert f.status is status, f.message
    if status is Status.FAIL:
        assert f.severity is Severity.WARNING
        assert f.evidence["source"] == source
    if status is Status.SKIP:
        assert f.message


def test_clock_never_guesses_from_the_name(fake_root):
    osinfo_db(fake_root)
    f = one(guest.clock_offset_mismatch, facts_for(fake_root, offline=True),
            domain_xml("windows10-build", clock="utc"))
    assert f.status is Status.SKIP


def test_clock_variable_basis(fake_root):
    osinfo_db(fake_root)
    facts = facts_for(fake_root, offline=True)
    xml = domain_xml(os_id=WIN10, clock="variable").replace("offset='variable'",
                                                           "offset='variable' adjustment='0' basis='utc'")
    assert one(guest.clock_offset_mismatch, facts, xml).status is Status.FAIL
    assert one(guest.clock_offset_mismatch, facts, xml.replace("basis='utc'", "basis='localtime'")).status \
        is Status.PASS


@pytest.mark.parametrize("os_id, start, want", [(WIN10, "utc", "localtime"),
                                                ("http://fedoraproject.org/fedora/38", "localtime", "utc")])
def test_clock_fix(fake_root, tmp_path, os_id, start, want):
    osinfo_db(fake_root)
    conn = libvirt_test_conn()
    name = unique("clock")
    define(conn, domain_xml(name, os_id=os_id, clock=start))
    p, out, new = fix_on_test_driver(guest.clock_offset_mismatch, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos))
    assert out.status == "fixed", out.detail
    assert etree.fromstring(new.encode()).find("clock").get("offset") == want
    assert f"-  <clock offset='{start}'/>" in p.diff(remedy.Env())


# -- windows-tablet -------------------------------------------------------------------------------------------
USB_TABLET = "    <input type='tablet' bus='usb'/>\n"
VIRTIO_TABLET = "    <input type='tablet' bus='virtio'/>\n"
PS2 = "    <input type='mouse' bus='ps2'/>\n    <input type='keyboard' bus='ps2'/>\n"


@pytest.mark.parametrize("os_id, devices, status", [
    pytest.param(WIN10, PS2, Status.FAIL, id="windows-ps2-only"),
    pytest.param(WIN10, USB_TABLET + PS2, Status.PASS, id="windows-one-usb-tablet"),
    pytest.param(WIN10, VIRTIO_TABLET + PS2, Status.PASS, id="windows-one-virtio-tablet"),
    pytest.param(WIN10, USB_TABLET + USB_TABLET + PS2, Status.FAIL, id="windows-two-tablets"),
    pytest.param(WIN10, USB_TABLET + VIRTIO_TABLET, Status.FAIL, id="windows-usb-and-virtio"),
    pytest.param("http://fedoraproject.org/fedora/38", PS2, Status.PASS, id="linux-no-tablet"),
    pytest.param(None, PS2, Status.SKIP, id="unknown-os"),
])
def test_windows_tablet(fake_root, os_id, devices, status):
    osinfo_db(fake_root)
    f = one(guest.windows_tablet, facts_for(fake_root, offline=True), domain_xml(os_id=os_id, devices=devices))
    assert f.status is status, f.message


@pytest.mark.parametrize("devices", [PS2, USB_TABLET + VIRTIO_TABLET + USB_TABLET + PS2,
                                     "    <controller type='usb' model='none'/>\n" + PS2],
                         ids=["add-one", "drop-duplicates", "usb-disabled"])
def test_windows_tablet_fix(fake_root, tmp_path, devices):
    osinfo_db(fake_root)
    conn = libvirt_test_conn()
    name = unique("tab")
    define(conn, domain_xml(name, os_id=WIN10, clock="localtime", devices=devices))
    p, out, new = fix_on_test_driver(guest.windows_tablet, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos))
    assert out.status == "fixed", out.detail
    root = etree.fromstring(new.encode())
    assert [(i.get("type"), i.get("bus")) for i in root.iterfind("devices/input") if i.get("type") == "tablet"] \
        == [("tablet", "usb")]
    assert all(c.get("model") != "none" for c in root.iterfind("devices/controller[@type='usb']"))


# -- usb-controller-model --------------------------------------------------------------------------------
def usb_ctl(model):
    return f"    <controller type='usb' index='0' model='{model}'/>\n"


HOSTDEV = ("    <hostdev mode='subsystem' type='usb'>\n      <source>\n        <vendor id='0x0781'/>\n"
           "        <product id='0x5581'/>\n      </source>\n    </hostdev>\n")


def sysfs_usb(fake_root, speed):
    d = "/sys/bus/usb/devices/2-1"
    fake_root.write(f"{d}/idVendor", "0781\n")
    fake_root.write(f"{d}/idProduct", "5581\n")
    fake_root.write(f"{d}/speed", f"{speed}\n")
    fake_root.write("/sys/bus/usb/devices/2-1:1.0/bInterfaceClass", "08\n")


@pytest.mark.parametrize("machine, devices, speed, status, text", [
    pytest.param("q35", usb_ctl("none") + USB_TABLET, None, Status.FAIL,
                 "Can't add USB input device. USB bus is disabled", id="none-with-tablet"),
    pytest.param("q35", usb_ctl("none") + HOSTDEV, None, Status.FAIL,
                 "Can't add host USB device: USB is disabled in this host", id="none-with-hostdev"),
    pytest.param("q35", usb_ctl("none") + "    <redirdev bus='usb' type='spicevmc'/>\n", None, Status.FAIL,
                 "USB is disabled for this domain, but USB devices are present in the domain XML",
                 id="none-with-redirdev"),
    pytest.param("q35", usb_ctl("none"), None, Status.PASS, "", id="none-without-devices"),
    pytest.param("pc", HOSTDEV, None, Status.FAIL, "USB 1.1", id="i440fx-default-uhci-hostdev"),
    pytest.param("pc", usb_ctl("piix3-uhci") + USB_TABLET, None, Status.PASS, "", id="uhci-tablet-is-fine"),
    pytest.param("pc", usb_ctl("ich9-ehci1") + HOSTDEV, 5000, Status.FAIL, "USB 3 device", id="usb3-on-ehci"),
    pytest.param("pc", usb_ctl("ich9-ehci1") + HOSTDEV, 480, Status.PASS, "", id="usb2-on-ehci"),
    pytest.param("pc", usb_ctl("qemu-xhci") + HOSTDEV, 5000, Status.PASS, "", id="usb3-on-xhci"),
    pytest.param("q35", HOSTDEV, 5000, Status.PASS, "", id="q35-default-xhci"),
])
def test_usb_controller_model(fake_root, machine, devices, speed, status, text):
    if speed:
        sysfs_usb(fake_root, speed)
    f = one(guest.usb_controller_model, facts_for(fake_root, offline=True), domain_xml(machine=machine,
                                                                                       devices=devices))
    assert f.status is status, f.message
    assert text in f.message
    if status is Status.FAIL:  # refused by libvirt: an error; merely slow: a warning
        assert f.severity is (Severity.ERROR if "disabled" in text else Severity.WARNING)


def test_usb_controller_fix(fake_root, tmp_path):
    conn = libvirt_test_conn()
    name = unique("usb")
    define(conn, domain_xml(name, machine="pc", devices=usb_ctl("piix3-uhci") + HOSTDEV))
    p, out, new = fix_on_test_driver(guest.usb_controller_model, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos))
    assert out.status == "fixed", out.detail
    models = [c.get("model") for c in etree.fromstring(new.encode()).iterfind("devices/controller[@type='usb']")]
    assert models == ["qemu-xhci"]


# -- the shared edit machinery --------------------------------------------------------------------------
def test_two_fixes_on_one_domain_keep_each_other(fake_root, tmp_path):
    """The second plan was built from the XML before the first fix; applying it
    must not undo the first (EditDomain re-applies its edit to the current XML)."""
    osinfo_db(fake_root)
    conn = libvirt_test_conn()
    name = unique("both")
    info = define(conn, domain_xml(name, os_id=WIN10, clock="utc", devices=PS2))
    facts = facts_for(fake_root, domains=[info])
    dom = domxml.from_info(info)
    plans = []
    for chk in (guest.clock_offset_mismatch, guest.windows_tablet):
        [f] = engine.run_check(chk, facts, dom)
        plans.append((chk, f.plan))
    env = remedy.Env(root=str(tmp_path), libvirt_open=lambda: conn)
    for chk, p in plans:
        out = remedy.apply_plan(p, env, chk.slug, dom.subject, lambda: (True, ""), str(tmp_path / "b"))
        assert out.status == "fixed"
    import libvirt
    root = etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    assert root.find("clock").get("offset") == "localtime"
    assert root.find("devices/input[@type='tablet']") is not None


def test_plans_for_preflight_files_and_running_domains(fake_root):
    osinfo_db(fake_root)
    facts = facts_for(fake_root, offline=True)
    xml = domain_xml("pf", os_id=WIN10, clock="utc")
    p = guest.set_clock_offset(facts, domxml.parse_domain(xml, "pf.xml"))
    assert p.auto.value == "manual" and "not a defined domain" in " ".join(p.notes)
    running = DomainInfo("pf", "u", xml, active=True)
    p = guest.set_clock_offset(facts, domxml.from_info(running))
    assert p.auto.value == "unsafe" and "next boot" in " ".join(p.notes)
    transient = DomainInfo("pf", "u", xml, persistent=False, active=True)
    assert guest.set_clock_offset(facts, domxml.from_info(transient)).auto.value == "manual"


# -- libvirt's own test XMLs ------------------------------------------------------------------------
CORPUS = Path("/work/shared/corpus/libvirt-9.0.0-qemuxml2argv")
# error-severity findings of these checks on corpus files WITHOUT an .err (libvirt accepts them);
# each must be a true problem. Today there are none (the two duplicate-MAC files use user-mode NICs,
# reported as warnings).
EXPECTED_ERRORS_ON_VALID: set[tuple[str, str]] = set()


def _all_checks():
    from virtdoctor.checks import display, nics

    return guest.virtdoctor_checks() + display.virtdoctor_checks() + nics.virtdoctor_checks()


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the qemuxml2argv corpus is not on this machine")
def test_corpus_offline_no_crash_and_no_false_errors():
    facts = HostFacts(offline=True)
    checks = _all_checks()
    crashed, errors, flagged = [], set(), {}
    for path in sorted(CORPUS.glob("*.xml")):
        try:
            dom = domxml.parse_domain(path.read_bytes(), str(path))
        except Exception:
            continue  # not a domain: the schema check reports those
        has_err = any(CORPUS.glob(path.stem + ".*err")) or (CORPUS / (path.stem + ".err")).exists()
        for chk in checks:
            for f in engine.run_check(chk, facts, dom):
                if f.status is Status.ERROR:
                    crashed.append((path.name, chk.slug, f.message))
                if f.status is Status.FAIL:
                    flagged.setdefault(path.stem, []).append((chk.slug, f.message))
                    if f.severity is Severity.ERROR and not has_err:
                        errors.add((path.name, chk.slug))
    assert crashed == []
    assert errors == EXPECTED_ERRORS_ON_VALID
    # the .err files whose text is one of ours are flagged with that text
    for stem in ("usb-none-hub", "usb-none-usbtablet"):
        text = (CORPUS / f"{stem}.err").read_text().strip().split(": ", 1)[1]
        assert any(slug == "usb-controller-model" and text in msg for slug, msg in flagged.get(stem, [])), stem


def test_plan_for_a_preflight_file_rewrites_the_file(fake_root, tmp_path):
    osinfo_db(fake_root)
    xml = domain_xml("pf", os_id=WIN10, clock="utc")
    fake_root.write("/srv/vms/pf.xml", xml)
    dom = domxml.parse_domain(xml, "/srv/vms/pf.xml", subject="xml:/srv/vms/pf.xml")
    dom.extra["file"] = "/srv/vms/pf.xml"
    p = guest.set_clock_offset(facts_for(fake_root, offline=True), dom)
    assert p.auto.value == "unsafe" and "virsh define --validate /srv/vms/pf.xml" in p.notes[-1]
    env = remedy.Env(root=str(fake_root))
    diff = p.diff(env)
    assert diff.count("\n-") == 1 and "-  <clock offset='utc'/>" in diff and "+  <clock offset='localtime'/>" in diff
    out = remedy.apply_plan(p, env, "clock-offset-mismatch", dom.subject, lambda: (True, ""), str(tmp_path / "b"))
    assert out.status == "fixed"
    assert "<clock offset='localtime'/>" in fake_root.read("/srv/vms/pf.xml")
