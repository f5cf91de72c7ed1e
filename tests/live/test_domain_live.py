"""Live: domain definition and storage failures on the real daemon (libvirt 9.0.0, QEMU 7.2).

Each test breaks a guest the way the catalogue says and shows libvirt's own error, then
virtdoctor finds it (preflight for XML that libvirt refuses at define, check for a defined
guest that cannot start), repairs it (preflight --fix --unsafe rewrites the XML file;
virtdoctor fix --yes --unsafe redefines a domain; manual findings are repaired by running the
exact commands the finding gives), and proves the repair: the guest defines and starts.
Everything is named vdtest-dom-*; fixtures remove guests, images and directories afterwards.
Images live below /srv/vdtest-domain-live-PID rather than /var/lib/libvirt/images, where the
leftover sweep of another live session running in parallel would delete them mid-test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import libvirt
import pytest

import vmhelpers
from vmhelpers import start_and_prove


def add_boot_order(xml: str, order: int = 1) -> str:
    return xml.replace("<target dev='vda' bus='virtio'/>",
                       f"<target dev='vda' bus='virtio'/>\n      <boot order='{order}'/>", 1)


def findings(stdout: str, slug: str, subject: str | None = None) -> list[dict]:
    doc = json.loads(stdout)
    return [f for f in doc["findings"] if f["id"] == slug and (subject is None or f["subject"] == subject)]


def define_refused(conn, xml: str, text: str) -> str:
    with pytest.raises(libvirt.libvirtError) as exc:
        conn.defineXML(xml)
    message = exc.value.get_error_message()
    assert text in message, message
    return message


def preflight_then_fix(run_virtdoctor, tmp_path, xml: str, slug: str, text: str) -> str:
    """preflight finds `slug` with libvirt's `text`; preflight --fix --unsafe rewrites the file;
    preflight is then clean for `slug`. The fixed XML."""
    path = tmp_path / "guest.xml"
    path.write_text(xml)
    rc, out, err = run_virtdoctor("--format", "json", "preflight", str(path))
    assert rc == 2, err
    [f] = [f for f in findings(out, slug, f"xml:{path}") if f["status"] == "fail" and text in f["message"]]
    assert f["severity"] == "error" and f["fix"]["auto"] == "unsafe"
    assert not vmhelpers_domain_exists(xml)  # preflight defines nothing
    rc, out, err = run_virtdoctor("--format", "json", "preflight", "--fix", "--unsafe",
                                  "--backup-dir", str(tmp_path / "backups"), str(path), "--only", slug)
    doc = json.loads(out)
    assert rc == 0, (err, doc["actions"], doc["findings"])
    assert [a["status"] for a in doc["actions"]] == ["fixed"]
    return path.read_text()


def vmhelpers_domain_exists(xml: str) -> bool:
    import re

    name = re.search(r"<name>([^<]+)</name>", xml).group(1)
    conn = vmhelpers.open_with_timeout(readonly=True)
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


@pytest.fixture
def images():
    """make(name) -> a fresh 16 MiB qcow2 below a per-test directory that QEMU's account can reach."""
    from pathlib import Path

    base = Path(f"/srv/vdtest-domain-live-{os.getpid()}")
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)

    def make(name: str, size_mib: int = 16) -> Path:
        path = base / f"{vmhelpers.check_name(name)}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"], check=True,
                       capture_output=True, timeout=30)
        return path

    make.base = base
    yield make
    shutil.rmtree(base, ignore_errors=True)


extra_images = images


# -- refused at define: preflight finds it, preflight --fix repairs the XML -------------------
def test_boot_order_conflict(libvirt_conn, vm_xml, define_vm, run_virtdoctor, tmp_path, images):
    xml = add_boot_order(vm_xml("vdtest-dom-boot", disk=images("vdtest-dom-boot")))  # <os><boot dev='hd'/> + <boot order>
    define_refused(libvirt_conn, xml, "per-device boot elements cannot be used together with os/boot elements")
    fixed = preflight_then_fix(run_virtdoctor, tmp_path, xml, "boot-order-conflict",
                               "per-device boot elements cannot be used together with os/boot elements")
    assert "<boot dev=" not in fixed and "<boot order='1'/>" in fixed
    start_and_prove(define_vm(fixed))


def test_cdrom_on_virtio(libvirt_conn, vm_xml, define_vm, run_virtdoctor, tmp_path, images):
    cdrom = ("    <disk type='file' device='cdrom'>\n      <target dev='vdb' bus='virtio'/>\n"
             "      <readonly/>\n    </disk>")
    xml = vm_xml("vdtest-dom-cdrom", disk=images("vdtest-dom-cdrom"), devices=cdrom)
    define_refused(libvirt_conn, xml, "disk type of 'vdb' does not support ejectable media")
    fixed = preflight_then_fix(run_virtdoctor, tmp_path, xml, "cdrom-on-virtio",
                               "disk type of 'vdb' does not support ejectable media")
    assert "<target dev='hda' bus='ide'/>" in fixed
    start_and_prove(define_vm(fixed))


def test_cdrom_ide_on_q35(libvirt_conn, vm_xml, define_vm, run_virtdoctor, tmp_path, images):
    cdrom = ("    <disk type='file' device='cdrom'>\n      <target dev='hdc' bus='ide'/>\n"
             "      <readonly/>\n    </disk>")
    xml = vm_xml("vdtest-dom-cdq35", machine="q35", disk=images("vdtest-dom-cdq35"), devices=cdrom)
    define_refused(libvirt_conn, xml, "IDE controllers are unsupported for this QEMU binary or machine type")
    fixed = preflight_then_fix(run_virtdoctor, tmp_path, xml, "cdrom-on-virtio",
                               "IDE controllers are unsupported for this QEMU binary or machine type")
    assert "<target dev='sda' bus='sata'/>" in fixed
    start_and_prove(define_vm(fixed))


def test_duplicate_drive_address(libvirt_conn, vm_xml, define_vm, run_virtdoctor, tmp_path, extra_images):
    # hdb was moved from ide to sata without renaming: its address (sata unit 1) is sdb's too
    a, b = extra_images("vdtest-dom-dup-a"), extra_images("vdtest-dom-dup-b")
    disks = "".join(f"    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n"
                    f"      <source file='{img}'/>\n      <target dev='{dev}' bus='sata'/>\n    </disk>\n"
                    for dev, img in (("hdb", a), ("sdb", b)))
    xml = vm_xml("vdtest-dom-dup", machine="q35", devices=disks)
    text = ("Found duplicate drive address for disk with target name 'hdb' controller='0' bus='0' "
            "target='0' unit='1'")
    define_refused(libvirt_conn, xml, text)
    fixed = preflight_then_fix(run_virtdoctor, tmp_path, xml, "disk-target-bus-mismatch", text)
    assert "<target dev='sda' bus='sata'/>" in fixed and "<target dev='sdb' bus='sata'/>" in fixed
    start_and_prove(define_vm(fixed))


# -- a defined guest that cannot start: check finds it, the fix or its commands repair it ------
def test_disk_source_missing(vm_xml, define_vm, run_virtdoctor, images):
    name = "vdtest-dom-missing"
    image = images.base / f"{name}.qcow2"
    image.unlink(missing_ok=True)
    xml = vm_xml(name).replace("    <serial", "    <disk type='file' device='disk'>\n"
                               "      <driver name='qemu' type='qcow2'/>\n"
                               f"      <source file='{image}'/>\n"
                               "      <target dev='vda' bus='virtio'/>\n    </disk>\n    <serial", 1)
    dom = define_vm(xml)
    try:
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.create()
        uid = vmhelpers.qemu_account()[1]
        libvirt_text = exc.value.get_error_message()
        assert f"Cannot access storage file '{image}' (as uid:{uid}, gid:" in libvirt_text
        assert "No such file or directory" in libvirt_text
        rc, out, err = run_virtdoctor("--format", "json", "check", "--domain", name, "--only", "disk-source-missing")
        assert rc == 2, err
        [f] = findings(out, "disk-source-missing", f"domain:{name}")
        assert f["status"] == "fail" and libvirt_text in f["message"]  # the very text libvirt gave
        assert f["fix"]["auto"] == "manual" and f"virsh detach-disk {name} vda --config" in f["fix"]["summary"]
        # manual: fix --yes --unsafe applies nothing; restoring the image is the repair
        rc, out, err = run_virtdoctor("fix", "--yes", "--unsafe", "--domain", name, "--only", "disk-source-missing")
        assert not image.exists()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
        rc, out, err = run_virtdoctor("--format", "json", "check", "--domain", name, "--only", "disk-source-missing")
        assert rc == 0 and findings(out, "disk-source-missing")[0]["status"] == "pass"
        start_and_prove(dom)
    finally:
        image.unlink(missing_ok=True)


def test_disk_source_permission_parent_dir_0700(vm_xml, define_vm, run_virtdoctor, images):
    name = "vdtest-dom-perm"
    folder = images.base / f"{name}-dir"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    try:
        image = folder / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
        xml = vm_xml(name, disk=image)
        dom = define_vm(xml)
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.create()
        uid = vmhelpers.qemu_account()[1]
        assert (f"Cannot access storage file '{image}' (as uid:{uid}, gid:" in exc.value.get_error_message()
                and "Permission denied" in exc.value.get_error_message()), exc.value.get_error_message()
        rc, out, err = run_virtdoctor("--format", "json", "check", "--domain", name, "--only", "disk-source-permission")
        assert rc == 2, err
        [f] = findings(out, "disk-source-permission", f"domain:{name}")
        assert f["status"] == "fail" and f"{folder} (root:root 0700" in f["message"] and "not searchable" in f["message"]
        assert f["fix"]["auto"] == "safe"  # an ACL entry for QEMU's user only, as virt-manager does
        user = vmhelpers.qemu_account()[0]
        assert f["fix"]["commands"] == [f"setfacl -m u:{user}:x {folder}"]
        for command in f["fix"]["commands"]:  # the exact commands the finding gives
            subprocess.run(command.split(), check=True)
        rc, out, err = run_virtdoctor("--format", "json", "check", "--domain", name, "--only", "disk-source-permission")
        assert rc == 0 and findings(out, "disk-source-permission")[0]["status"] == "pass", out
        start_and_prove(dom)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_disk_cache_fix_redefines_through_libvirt(libvirt_conn, vm_xml, define_vm, run_virtdoctor, images):
    name = "vdtest-dom-cache"
    xml = vm_xml(name, disk=images(name)).replace("<driver name='qemu' type='qcow2'/>",
                                            "<driver name='qemu' type='qcow2' cache='writeback'/>")
    dom = define_vm(xml)
    rc, out, err = run_virtdoctor("--format", "json", "check", "--domain", name, "--only", "disk-cache-unsafe")
    assert rc == 1, err  # a warning
    [f] = findings(out, "disk-cache-unsafe", f"domain:{name}")
    assert f["status"] == "fail" and "cache='writeback'" in f["message"]
    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--domain", name, "--only", "disk-cache-unsafe")
    assert [a["status"] for a in json.loads(out)["actions"]] == ["skipped"]  # unsafe: needs --unsafe
    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--unsafe", "--domain", name,
                                  "--only", "disk-cache-unsafe")
    [action] = json.loads(out)["actions"]
    assert action["status"] == "fixed" and action["verified"], action
    assert "+      <driver name='qemu' type='qcow2' cache='none' io='threads'/>" in action["diff"]
    assert os.path.exists(os.path.join(action["backup"], "domains", f"{name}.xml"))
    new = libvirt_conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "cache='none' io='threads'" in new
    start_and_prove(dom)


def test_target_renamed_for_its_bus_on_a_defined_guest(libvirt_conn, vm_xml, define_vm, run_virtdoctor,
                                                       extra_images):
    name = "vdtest-dom-tgt"
    img = extra_images("vdtest-dom-tgt-b")
    disk = (f"    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n"
            f"      <source file='{img}'/>\n      <target dev='hdb' bus='sata'/>\n    </disk>")
    dom = define_vm(vm_xml(name, machine="q35", devices=disk))
    rc, out, err = run_virtdoctor("--format", "json", "check", "--domain", name, "--only", "disk-target-bus-mismatch")
    assert rc == 1, err  # a warning
    [f] = [f for f in findings(out, "disk-target-bus-mismatch") if f["status"] == "fail"]
    assert f["severity"] == "warning" and "hdb" in f["message"]
    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--unsafe", "--domain", name,
                                  "--only", "disk-target-bus-mismatch")
    assert out.strip(), err
    [action] = json.loads(out)["actions"]
    assert action["status"] == "fixed", action
    new = libvirt_conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<target dev='sda' bus='sata'/>" in new and "hdb" not in new
    start_and_prove(dom)


def test_running_guest_is_told_the_fix_applies_at_next_boot(libvirt_conn, vm_xml, define_vm, run_virtdoctor,
                                                           images):
    name = "vdtest-dom-running"
    xml = vm_xml(name, disk=images(name)).replace("<driver name='qemu' type='qcow2'/>",
                                            "<driver name='qemu' type='qcow2' cache='unsafe'/>")
    dom = define_vm(xml)
    dom.create()
    try:
        rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--unsafe", "--domain", name,
                                      "--only", "disk-cache-unsafe")
        [action] = json.loads(out)["actions"]
        assert action["status"] == "fixed" and any("next boot" in n for n in action["notes"]), action
        assert "cache='unsafe'" in dom.XMLDesc(0)  # the running guest keeps its configuration
        assert "cache='none'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        dom.destroy()


# -- a stored config that today's validation refuses: check finds it, fix redefines it -------

def test_stored_cdrom_on_virtio_check_and_fix(vm_xml, stored_domain, run_virtdoctor, libvirt_conn, images):
    name = "vdtest-dom-stored-cd"
    cdrom = ("    <disk type='file' device='cdrom'>\n      <target dev='vdb' bus='virtio'/>\n"
             "      <readonly/>\n    </disk>")
    dom = stored_domain(name, vm_xml(name, disk=images(name), devices=cdrom))
    with pytest.raises(libvirt.libvirtError) as exc:
        dom.create()
    text = "disk type of 'vdb' does not support ejectable media"
    assert text in exc.value.get_error_message()
    rc, out, err = run_virtdoctor("--format", "json", "check", "--domain", name, "--only", "cdrom-on-virtio")
    assert rc == 2, err
    [f] = findings(out, "cdrom-on-virtio", f"domain:{name}")
    assert f["status"] == "fail" and text in f["message"] and f["fix"]["auto"] == "unsafe"
    rc, out, err = run_virtdoctor("--format", "json", "fix", "--yes", "--unsafe", "--domain", name,
                                  "--only", "cdrom-on-virtio")
    [action] = json.loads(out)["actions"]
    assert action["status"] == "fixed" and action["verified"], action
    assert "+      <target dev='hda' bus='ide'/>" in action["diff"]
    dom = vmhelpers.open_with_timeout().lookupByName(name)
    start_and_prove(dom)
