"""checks/display.py: display-not-initialized, video-model-unsuitable, spice-unsupported.

Domain capabilities are the ones recorded on this host (tests/roots/guest-domcaps-*);
"a QEMU without SPICE" is that recording with the spice value taken out, since this
host's QEMU has SPICE (the live test proves the negative there)."""
from __future__ import annotations

import pytest
from lxml import etree

from test_guest import (DOMCAPS_Q35, define, domain_xml, domcaps_without, facts_for, fix_on_test_driver,
                        libvirt_test_conn, one, unique)
from virtdoctor.checks import display
from virtdoctor.model import Severity, Status

NO_SPICE = domcaps_without("spice", "graphics/enum[@name='type']")
NO_QXL = domcaps_without("qxl", "video/enum[@name='modelType']")
SECURE_EFI = ("    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>\n")
SECURE_FW = ("    <firmware>\n      <feature enabled='yes' name='secure-boot'/>\n    </firmware>\n")


def video(model, extra=""):
    return f"    <video>\n      <model type='{model}'{extra}/>\n    </video>\n"


def cdrom(path):
    return (f"    <disk type='file' device='cdrom'>\n      <source file='{path}'/>\n"
            "      <target dev='sda' bus='sata'/>\n      <readonly/>\n    </disk>\n")


# -- display-not-initialized -----------------------------------------------------------------
@pytest.mark.parametrize("kw, status, cause", [
    pytest.param(dict(machine="pc-i440fx-7.2", os_extra=SECURE_EFI), Status.FAIL, "secure-boot-on-i440fx",
                 id="secure-loader-on-i440fx"),
    pytest.param(dict(machine="pc", os_attrs=" firmware='efi'", os_extra=SECURE_FW), Status.FAIL,
                 "secure-boot-on-i440fx", id="secure-autoselect-on-pc"),
    pytest.param(dict(machine="pc-q35-7.2", os_extra=SECURE_EFI), Status.PASS, None, id="secure-on-q35"),
    pytest.param(dict(machine="pc", os_attrs=" firmware='efi'"), Status.PASS, None, id="plain-uefi-on-pc"),
    pytest.param(dict(devices=cdrom("/isos/ubuntu-20.04-live-server-arm64.iso")), Status.FAIL, "media-arch",
                 id="arm64-iso-on-x86"),
    pytest.param(dict(arch="aarch64", machine="virt", devices=cdrom("/isos/debian-12.2.0-amd64-netinst.iso")),
                 Status.FAIL, "media-arch", id="amd64-iso-on-aarch64"),
    pytest.param(dict(devices=cdrom("/isos/debian-12.2.0-amd64-netinst.iso")), Status.PASS, None,
                 id="amd64-iso-on-x86"),
    pytest.param(dict(devices=cdrom("/isos/Win10_22H2_English_x64.iso")), Status.PASS, None, id="x64-iso-on-x86"),
    pytest.param(dict(devices=cdrom("/isos/install.iso")), Status.PASS, None, id="iso-names-no-arch"),
    pytest.param(dict(arch="aarch64", machine="virt", os_attrs=" firmware='efi'", devices=video("vga")),
                 Status.FAIL, "aarch64-vga", id="aarch64-uefi-vga"),
    pytest.param(dict(arch="aarch64", machine="virt", os_attrs=" firmware='efi'", devices=video("virtio")),
                 Status.PASS, None, id="aarch64-uefi-virtio"),
    pytest.param(dict(devices=video("vga")), Status.PASS, None, id="x86-vga"),
])
def test_display_not_initialized(fake_root, kw, status, cause):
    f = one(display.display_not_initialized, facts_for(fake_root, offline=True), domain_xml(**kw))
    assert f.status is status, f.message
    if cause:
        assert cause in f.evidence["causes"] and f.severity is Severity.WARNING
        assert "Guest has not initialized the display (yet)" in f.message


def test_media_arch_names():
    assert display.media_arch("/x/ubuntu-22.04.3-live-server-arm64.iso") == "aarch64"
    assert display.media_arch("/x/Fedora-Server-dvd-aarch64-38-1.6.iso") == "aarch64"
    assert display.media_arch("/x/CentOS-7-x86_64-Minimal-2009.iso") == "x86"
    assert display.media_arch("/x/alpine-virt-3.18.4-x86.iso") == "x86"
    assert display.media_arch("/x/my-x86_64-notes/readme.iso") is None  # only the file name counts
    assert display.media_arch("/x/armadillo.iso") is None


def test_display_fix_secure_boot_moves_to_q35(fake_root, tmp_path):
    conn = libvirt_test_conn()
    name = unique("disp")
    ide = ("    <disk type='file' device='disk'>\n      <source file='/var/lib/libvirt/images/x.qcow2'/>\n"
           "      <target dev='hda' bus='ide'/>\n    </disk>\n")
    define(conn, domain_xml(name, machine="pc-i440fx-7.2", os_extra=SECURE_EFI, devices=ide + video("vga"),
                            features="  <features>\n    <acpi/>\n    <smm state='on'/>\n  </features>\n"))
    p, out, new = fix_on_test_driver(display.display_not_initialized, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos))
    assert p.auto.value == "unsafe"
    assert out.status == "fixed", out.detail
    root = etree.fromstring(new.encode())
    assert root.find("os/type").get("machine") == "pc-q35-7.2"
    assert root.find("devices/disk/target").attrib == {"dev": "sda", "bus": "sata"}


def test_display_fix_for_foreign_media_is_manual(fake_root):
    from virtdoctor import domxml

    dom = domxml.parse_domain(domain_xml(devices=cdrom("/isos/ubuntu-arm64.iso")), "x.xml")
    p = display.fix_display(facts_for(fake_root, offline=True), dom)
    assert p.auto.value == "manual" and not p.actions
    assert "/isos/ubuntu-arm64.iso is for aarch64" in p.notes[0]


# -- video-model-unsuitable ---------------------------------------------------------------------
@pytest.mark.parametrize("kw, domcaps, status, severity, text", [
    pytest.param(dict(arch="aarch64", machine="virt", devices=video("qxl")), None, Status.FAIL, Severity.ERROR,
                 "domain configuration does not support video model 'qxl'", id="aarch64-qxl"),
    pytest.param(dict(arch="aarch64", machine="virt", devices=video("vga")), None, Status.FAIL, Severity.WARNING,
                 "slow or garbled", id="aarch64-vga"),
    pytest.param(dict(arch="aarch64", machine="virt", devices=video("virtio")), None, Status.PASS, None, "",
                 id="aarch64-virtio"),
    pytest.param(dict(devices=video("qxl")), DOMCAPS_Q35, Status.PASS, None, "", id="x86-qxl-offered"),
    pytest.param(dict(devices=video("qxl")), NO_QXL, Status.FAIL, Severity.ERROR,
                 "domain configuration does not support video model 'qxl'", id="x86-qxl-not-offered"),
    pytest.param(dict(devices=video("vga")), NO_QXL, Status.PASS, None, "", id="x86-vga"),
    pytest.param(dict(devices=video("none")), DOMCAPS_Q35, Status.PASS, None, "", id="no-video"),
])
def test_video_model_unsuitable(fake_root, kw, domcaps, status, severity, text):
    f = one(display.video_model_unsuitable, facts_for(fake_root, domcaps=domcaps), domain_xml(**kw))
    assert f.status is status, f.message
    if status is Status.FAIL:
        assert f.severity is severity and text in f.message


def test_video_model_offline_still_judges_the_arch(fake_root):
    f = one(display.video_model_unsuitable, facts_for(fake_root, offline=True),
            domain_xml(arch="aarch64", machine="virt", devices=video("qxl")))
    assert f.status is Status.FAIL and "domcapabilities_unavailable" in f.evidence


def test_video_fix(fake_root, tmp_path):
    conn = libvirt_test_conn()
    name = unique("vid")
    define(conn, domain_xml(name, devices=video("qxl", " ram='65536' vram='65536' vgamem='16384' heads='1'")))
    p, out, new = fix_on_test_driver(display.video_model_unsuitable, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos, domcaps=NO_QXL))
    assert out.status == "fixed", out.detail
    model = etree.fromstring(new.encode()).find("devices/video/model")
    assert model.get("type") == "virtio" and model.get("ram") is None


# -- spice-unsupported -------------------------------------------------------------------------------
SPICE = ("    <graphics type='spice' autoport='yes' listen='127.0.0.1'>\n"
         "      <listen type='address' address='127.0.0.1'/>\n      <image compression='off'/>\n"
         "    </graphics>\n")
SPICEVMC = ("    <channel type='spicevmc'>\n      <target type='virtio' name='com.redhat.spice.0'/>\n"
            "    </channel>\n    <redirdev bus='usb' type='spicevmc'/>\n")


@pytest.mark.parametrize("devices, domcaps, status", [
    pytest.param(SPICE, NO_SPICE, Status.FAIL, id="spice-without-spice"),
    pytest.param(SPICE, DOMCAPS_Q35, Status.PASS, id="spice-offered"),
    pytest.param("    <graphics type='vnc' port='-1'/>\n", NO_SPICE, Status.PASS, id="vnc"),
])
def test_spice_unsupported(fake_root, devices, domcaps, status):
    f = one(display.spice_unsupported, facts_for(fake_root, domcaps=domcaps), domain_xml(devices=devices))
    assert f.status is status, f.message
    if status is Status.FAIL:
        assert "spice graphics are not supported with this QEMU" in f.message


def test_spice_skips_without_libvirt(fake_root):
    f = one(display.spice_unsupported, facts_for(fake_root, offline=True), domain_xml(devices=SPICE))
    assert f.status is Status.SKIP and "offline" in f.message
    f = one(display.spice_unsupported, facts_for(fake_root, error="Failed to connect socket"),
            domain_xml(devices=SPICE))
    assert f.status is Status.SKIP


def test_spice_fix_uses_vnc(fake_root, tmp_path):
    conn = libvirt_test_conn()
    name = unique("spice")
    define(conn, domain_xml(name, devices=SPICE + SPICEVMC + video("qxl")
                            + "    <controller type='usb' index='0' model='qemu-xhci'/>\n"))
    p, out, new = fix_on_test_driver(display.spice_unsupported, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos, domcaps=NO_SPICE))
    assert out.status == "fixed", out.detail
    root = etree.fromstring(new.encode())
    assert [g.get("type") for g in root.iterfind("devices/graphics")] == ["vnc"]
    assert root.find("devices/graphics/listen").get("address") == "127.0.0.1"
    assert root.find("devices/channel[@type='spicevmc']") is None and root.find("devices/redirdev") is None
