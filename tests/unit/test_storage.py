"""checks/storage.py: cdrom-on-virtio, disk-target-bus-mismatch, disk-source-missing,
disk-source-permission, disk-cache-unsafe. Small hand-written XMLs (healthy and broken twins),
a fake host root for files, modes and ACLs (judged for QEMU's account, not for the test's
root), and fixes applied by the remedy engine to domains on libvirt's test driver, where
libvirt itself parses and validates the redefined XML."""
from __future__ import annotations

import itertools
import os

import pytest
from lxml import etree

from virtdoctor import domxml, engine, remedy
from virtdoctor.checks import storage as S
from virtdoctor.facts import HostFacts
from virtdoctor.facts.files import ACL_XATTR, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, AclEntry, encode_acl_xattr
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.model import Auto, Severity, Status

QEMU_UID, QEMU_GID, KVM_GID = 64055, 64055, 994
_n = itertools.count(1)


def xml(name="vm", *, machine="pc", devices="", extra=""):
    return (f"<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='KiB'>65536</memory>\n"
            f"  <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='{machine}'>hvm</type>\n  </os>\n"
            f"{extra}  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n{devices}  </devices>\n"
            "</domain>\n")


def disk(target, bus, *, device="disk", source="/var/lib/libvirt/images/{t}.img", kind="file", driver="",
         address="", extra=""):
    src = ""
    if source:
        attr = "file" if kind == "file" else "dev"
        src = f"      <source {attr}='{source.format(t=target)}'/>\n"
    return (f"    <disk type='{kind}' device='{device}'>\n{driver}{src}      <target dev='{target}' bus='{bus}'/>\n"
            f"{extra}{address}    </disk>\n")


def facts(root, offline=False, domains=()):
    lv = None if offline else RecordedLibvirt(domains=list(domains))
    return HostFacts(root=str(root), uri="qemu:///system", offline=offline, libvirt_facts=lv)


def run(chk, f, text, info=None):
    return engine.run_check(chk, f, domxml.parse_domain(text, "vm.xml", info=info))


def fails(chk, f, text, info=None):
    return [r for r in run(chk, f, text, info) if r.status is Status.FAIL]


# -- cdrom-on-virtio -----------------------------------------------------------------
@pytest.mark.parametrize("machine, devices, n", [
    pytest.param("pc", disk("hdc", "ide", device="cdrom", source=""), 0, id="i440fx-ide-cdrom"),
    pytest.param("q35", disk("sda", "sata", device="cdrom", source=""), 0, id="q35-sata-cdrom"),
    pytest.param("pc", disk("sda", "scsi", device="cdrom", source=""), 0, id="scsi-cdrom"),
    pytest.param("pc", disk("vdb", "virtio", device="cdrom", source=""), 1, id="virtio-cdrom"),
    pytest.param("pc-q35-7.2", disk("hdc", "ide", device="cdrom", source=""), 1, id="q35-ide-cdrom"),
    pytest.param("pc", disk("vda", "virtio"), 0, id="virtio-disk-is-fine"),
])
def test_cdrom_on_virtio(tmp_path, machine, devices, n):
    found = fails(S.cdrom_on_virtio, facts(tmp_path, offline=True), xml(machine=machine, devices=devices))
    assert len(found) == n
    if n and "virtio" in devices:
        assert "disk type of 'vdb' does not support ejectable media" in found[0].message
        assert "disk type 'virtio' of 'vdb' does not support ejectable media" in found[0].message


# -- disk-target-bus-mismatch -------------------------------------------------------
@pytest.mark.parametrize("devices, kinds", [
    pytest.param(disk("vda", "virtio") + disk("sda", "sata"), [], id="healthy"),
    pytest.param(disk("hda", "ide") + disk("hdb", "ide") + disk("hdc", "ide"), [], id="three-ide"),
    pytest.param(disk("hdb", "sata") + disk("sdb", "sata"), ["duplicate-address", "prefix"],
                 id="bus-changed-without-target"),
    pytest.param(disk("sda", "sata") + disk("sdb", "sata", address="      <address type='drive' controller='0' "
                                                              "bus='0' target='0' unit='0'/>\n"),
                 ["duplicate-address"], id="stale-explicit-address"),
    pytest.param(disk("vda", "virtio") + disk("vda", "virtio", source="/b.img"), ["duplicate-target"],
                 id="duplicate-target"),
    pytest.param(disk("vdb", "sata"), ["prefix"], id="vd-on-sata"),
    pytest.param(disk("hda", "virtio"), [], id="hd-on-virtio-is-a-mere-hint"),
    pytest.param(disk("sda", "scsi") + disk("sdh", "scsi"), [], id="wide-scsi-skips-unit-7"),
])
def test_disk_target_bus_mismatch(tmp_path, devices, kinds):
    rs = fails(S.disk_target_bus_mismatch, facts(tmp_path, offline=True), xml(machine="q35", devices=devices))
    assert sorted(r.evidence["kind"] for r in rs) == sorted(kinds)
    for r in rs:
        assert r.severity is (Severity.WARNING if r.evidence["kind"] == "prefix" else Severity.ERROR)
    if "duplicate-address" in kinds and "hdb" in devices:
        msg = next(r.message for r in rs if r.evidence["kind"] == "duplicate-address")
        assert ("Found duplicate drive address for disk with target name 'hdb' controller='0' bus='0' "
                "target='0' unit='1'") in msg


def test_duplicate_target_names_the_sources_in_libvirts_order(tmp_path):
    # libvirt keeps disks grouped by bus (virDomainDiskInsert): ide sda moves before usb sda
    devs = (disk("hda", "ide", source="/a.img") + disk("sda", "usb", source="/usb.img")
            + disk("sda", "ide", source="/ide.img"))
    rs = fails(S.disk_target_bus_mismatch, facts(tmp_path, offline=True), xml(devices=devs))
    dup = [r for r in rs if r.evidence["kind"] == "duplicate-target"]
    assert "target 'sda' duplicated for disk sources '/ide.img' and '/usb.img'" in dup[0].message


def test_disk_vs_scsi_hostdev_address(tmp_path):
    devs = (disk("sda", "scsi") + "    <hostdev mode='subsystem' type='scsi' managed='no'>\n"
            "      <source><adapter name='scsi_host2'/><address bus='0' target='0' unit='1'/></source>\n"
            "      <address type='drive' controller='0' bus='0' target='0' unit='0'/>\n    </hostdev>\n")
    [r] = fails(S.disk_target_bus_mismatch, facts(tmp_path, offline=True), xml(devices=devs))
    assert "using disk target name 'sda' conflicts with SCSI host device address controller='0'" in r.message


def test_disk_name_index_round_trip():
    for i in (0, 1, 25, 26, 27, 701, 702):
        assert domxml.disk_name_index(domxml.disk_index_name("sd", i)) == i
    assert domxml.disk_name_index("vdb1") is None and domxml.disk_name_index("nvme0") is None


# -- fixes on libvirt's test driver --------------------------------------------------------
@pytest.fixture
def conn():
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    c = libvirt.open("test:///default")
    names = []
    c.names = names
    yield c
    for n in names:
        try:
            c.lookupByName(n).undefine()
        except libvirt.libvirtError:
            pass
    c.close()


def define_info(conn, text):
    import libvirt

    d = conn.defineXML(text)
    conn.names.append(d.name())
    return DomainInfo(name=d.name(), uuid=d.UUIDString(), xml=d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                      active=bool(d.isActive()))


def apply_fix(chk, conn, tmp_path, name, root=None):
    """Check the defined domain, build the plan, apply it (backup, redefine, re-check)."""
    import libvirt

    def current():
        d = conn.lookupByName(name)
        return domxml.from_info(DomainInfo(name=name, uuid=d.UUIDString(),
                                           xml=d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))

    f = facts(root or tmp_path, offline=True)
    dom = current()
    failing = [r for r in engine.run_check(chk, f, dom) if r.status is Status.FAIL]
    assert failing
    p = failing[0].plan

    def recheck():
        rs = engine.run_check(chk, f, current())
        bad = [r for r in rs if r.status is not Status.PASS]
        return not bad, bad[0].message if bad else ""

    env = remedy.Env(root=str(tmp_path), libvirt_open=lambda: conn)
    out = remedy.apply_plan(p, env, chk.slug, dom.subject, recheck, str(tmp_path / "backups"))
    return p, out, etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())


def test_cdrom_fix_moves_it_to_ide_on_i440fx(conn, tmp_path):
    name = f"vd-cd-{next(_n)}"
    define_info(conn, xml(name, devices=disk("vda", "virtio") + disk("vdb", "virtio", device="cdrom", source="")))
    p, out, new = apply_fix(S.cdrom_on_virtio, conn, tmp_path, name)
    assert p.auto is Auto.UNSAFE and "-      <target dev='vdb' bus='virtio'/>" in p.diff(remedy.Env())
    assert out.status == "fixed", out.detail
    cd = new.find("devices/disk[@device='cdrom']/target")
    assert (cd.get("dev"), cd.get("bus")) == ("hda", "ide")
    assert new.find("devices/disk[@device='cdrom']/address").get("type") == "drive"  # libvirt reassigned it


def test_cdrom_fix_picks_sata_on_q35_and_a_free_name(conn, tmp_path):
    name = f"vd-cd-{next(_n)}"
    define_info(conn, xml(name, machine="q35", devices=disk("sda", "sata") + disk("vdb", "virtio", device="cdrom",
                                                                                     source="")))
    p, out, new = apply_fix(S.cdrom_on_virtio, conn, tmp_path, name)
    assert out.status == "fixed", out.detail
    cd = new.find("devices/disk[@device='cdrom']/target")
    assert (cd.get("dev"), cd.get("bus")) == ("sdb", "sata")


def test_target_fix_renames_the_disk_whose_bus_changed(conn, tmp_path):
    name = f"vd-tg-{next(_n)}"
    # hdb moved to sata without renaming: libvirt would refuse hdb+sdb (both unit 1); define a
    # mismatched-but-valid pair, then check the fix renames hdb to a free sd name
    define_info(conn, xml(name, machine="q35", devices=disk("hdb", "sata") + disk("sda", "sata")))
    p, out, new = apply_fix(S.disk_target_bus_mismatch, conn, tmp_path, name)
    assert out.status == "fixed", out.detail
    targets = sorted((t.get("dev"), t.get("bus")) for t in new.iterfind("devices/disk/target"))
    assert targets == [("sda", "sata"), ("sdb", "sata")]


def test_target_fix_on_a_file_with_duplicate_address(tmp_path):
    path = tmp_path / "dup.xml"
    text = xml("dup", machine="q35", devices=disk("hdb", "sata") + disk("sdb", "sata"))
    path.write_text(text)
    f = facts(tmp_path, offline=True)
    dom = domxml.parse_domain(text, str(path))
    dom.extra["file"] = str(path)
    found = [r for r in engine.run_check(S.disk_target_bus_mismatch, f, dom) if r.status is Status.FAIL]
    p = found[0].plan
    assert "hdb->sda" in p.summary and "drive addresses unique" in p.summary  # the mismatched one is renamed, to the first free sd name

    def recheck():
        d2 = domxml.parse_domain(path.read_text(), str(path))
        bad = [r for r in engine.run_check(S.disk_target_bus_mismatch, f, d2) if r.status is not Status.PASS]
        return not bad, bad[0].message if bad else ""

    out = remedy.apply_plan(p, remedy.Env(root="/"), "disk-target-bus-mismatch", dom.subject, recheck,
                            str(tmp_path / "bk"))
    assert out.status == "fixed", out.detail
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    c = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError, match="Found duplicate drive address for disk with target name 'hdb'"):
            c.defineXML(text)
        c.defineXML(path.read_text()).undefine()
    finally:
        c.close()


def test_cache_fix_sets_none_and_io_by_disk_type(conn, tmp_path):
    name = f"vd-cache-{next(_n)}"
    wb = "      <driver name='qemu' type='raw' cache='writeback'/>\n"
    define_info(conn, xml(name, devices=disk("vda", "virtio", driver=wb)
                          + disk("vdb", "virtio", kind="block", source="/dev/vg/x", driver=wb)))
    p, out, new = apply_fix(S.disk_cache_unsafe, conn, tmp_path, name)
    assert out.status == "fixed", out.detail
    drivers = {d.find("target").get("dev"): (d.find("driver").get("cache"), d.find("driver").get("io"))
               for d in new.iterfind("devices/disk")}
    assert drivers == {"vda": ("none", "threads"), "vdb": ("none", "native")}


@pytest.mark.parametrize("driver, status", [
    pytest.param("", Status.PASS, id="default"),
    pytest.param("      <driver name='qemu' cache='none' io='native'/>\n", Status.PASS, id="none-native"),
    pytest.param("      <driver name='qemu' cache='directsync'/>\n", Status.PASS, id="directsync"),
    pytest.param("      <driver name='qemu' cache='unsafe'/>\n", Status.FAIL, id="unsafe"),
    pytest.param("      <driver name='qemu' cache='writethrough'/>\n", Status.FAIL, id="writethrough"),
    pytest.param("      <driver name='qemu' io='native'/>\n", Status.FAIL, id="native-without-cache-none"),
])
def test_disk_cache_unsafe(tmp_path, driver, status):
    [r] = run(S.disk_cache_unsafe, facts(tmp_path, offline=True), xml(devices=disk("vda", "virtio", driver=driver)))
    assert r.status is status
    if status is Status.FAIL:
        assert r.severity is Severity.WARNING


def test_cache_ignores_readonly_cdrom(tmp_path):
    cd = disk("hdc", "ide", device="cdrom", driver="      <driver name='qemu' cache='unsafe'/>\n")
    [r] = run(S.disk_cache_unsafe, facts(tmp_path, offline=True), xml(devices=cd))
    assert r.status is Status.PASS


# -- disk-source-missing ------------------------------------------------------------------
def test_disk_source_missing(fake_root):
    fake_root.write("/var/lib/libvirt/images/vda.img", b"x")
    f = facts(fake_root)
    text = xml(devices=disk("vda", "virtio") + disk("vdb", "virtio") + disk("hdc", "ide", device="cdrom",
                                                                          source="/isos/gone.iso"))
    rs = fails(S.disk_source_missing, f, text)
    assert sorted(r.evidence["target"] for r in rs) == ["hdc", "vdb"]
    vdb = next(r for r in rs if r.evidence["target"] == "vdb")
    assert ("Cannot access storage file '/var/lib/libvirt/images/vdb.img': No such file or directory"
            in vdb.message)
    assert vdb.fix.auto is Auto.MANUAL and "virsh detach-disk vm vdb --config" in vdb.fix.summary
    hdc = next(r for r in rs if r.evidence["target"] == "hdc")
    assert "change-media vm hdc --eject" in hdc.fix.summary


def test_disk_source_missing_optional_cdrom_and_network_disks_pass(fake_root):
    opt = ("    <disk type='file' device='cdrom'>\n      <source file='/isos/x.iso' startupPolicy='optional'/>\n"
           "      <target dev='hdc' bus='ide'/>\n    </disk>\n"
           "    <disk type='network' device='disk'>\n      <source protocol='nbd' name='x'>"
           "<host name='h' port='10809'/></source>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n")
    [r] = run(S.disk_source_missing, facts(fake_root), xml(devices=opt))
    assert r.status is Status.PASS


def test_host_checks_skip_offline(fake_root):
    f = facts(fake_root, offline=True)
    for chk in (S.disk_source_missing, S.disk_source_permission):
        [r] = run(chk, f, xml(devices=disk("vda", "virtio")))
        assert r.status is Status.SKIP and "--offline" in r.message


# -- disk-source-permission -------------------------------------------------------------
def host(fake_root, *, dynamic=None):
    fake_root.passwd([("root", 0, 0), ("libvirt-qemu", QEMU_UID, QEMU_GID), ("alice", 1000, 1000)])
    fake_root.group([("root", 0), ("libvirt-qemu", QEMU_GID), ("kvm", KVM_GID, "libvirt-qemu"), ("alice", 1000)])
    conf = 'user = "libvirt-qemu"\ngroup = "libvirt-qemu"\n'
    if dynamic is not None:
        conf += f"dynamic_ownership = {dynamic}\n"
    fake_root.write("/etc/libvirt/qemu.conf", conf)
    return facts(fake_root)


def perm_results(fake_root, f, devices):
    return run(S.disk_source_permission, f, xml(devices=devices))


def test_permission_ok_in_var_lib_libvirt_images(fake_root):
    f = host(fake_root)
    fake_root.mkdir("/var/lib/libvirt/images", 0o711)
    fake_root.write("/var/lib/libvirt/images/vda.img", b"x", 0o600)  # root-owned: libvirt chowns it
    [r] = perm_results(fake_root, f, disk("vda", "virtio"))
    assert r.status is Status.PASS, r.message


def test_permission_home_dir_0700_blocks_qemu(fake_root):
    f = host(fake_root)
    fake_root.mkdir("/home/alice", 0o700)
    fake_root.write("/home/alice/vm.qcow2", b"x", 0o644)
    [r] = perm_results(fake_root, f, disk("vda", "virtio", source="/home/alice/vm.qcow2"))
    assert r.status is Status.FAIL
    assert "/home/alice" in r.message and "not searchable" in r.message
    assert "Cannot access storage file '/home/alice/vm.qcow2' (as uid:64055, gid:64055): Permission denied" in r.message
    assert r.evidence["commands"] == ["setfacl -m u:libvirt-qemu:x /home/alice"]
    assert r.fix.auto is Auto.MANUAL and r.fix.commands == ("setfacl -m u:libvirt-qemu:x /home/alice",)


def test_permission_acl_on_the_directory_grants_traversal(fake_root):
    f = host(fake_root)
    d = fake_root.mkdir("/home/alice", 0o700)
    acl = encode_acl_xattr([AclEntry(USER_OBJ, 7, None), AclEntry(USER, 1, QEMU_UID), AclEntry(GROUP_OBJ, 0, None),
                            AclEntry(MASK, 1, None), AclEntry(OTHER, 0, None)])
    try:
        os.setxattr(d, ACL_XATTR, acl)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on {d}: {exc}")
    fake_root.write("/home/alice/vm.qcow2", b"x", 0o644)
    [r] = perm_results(fake_root, f, disk("vda", "virtio", source="/home/alice/vm.qcow2"))
    assert r.status is Status.PASS, r.message


def test_permission_without_dynamic_ownership_the_file_itself_counts(fake_root):
    f = host(fake_root, dynamic=0)
    fake_root.mkdir("/srv/vm", 0o755)
    fake_root.write("/srv/vm/a.img", b"x", 0o600)  # root:root 0600, nobody chowns it
    fake_root.write("/srv/vm/b.img", b"x", 0o644)  # readable by others: fine read-only
    devs = (disk("vda", "virtio", source="/srv/vm/a.img")
            + disk("vdb", "virtio", source="/srv/vm/b.img", extra="      <readonly/>\n"))
    rs = [r for r in perm_results(fake_root, f, devs) if r.status is Status.FAIL]
    assert [r.evidence["target"] for r in rs] == ["vda"]
    assert rs[0].evidence["commands"] == ["setfacl -m u:libvirt-qemu:rw /srv/vm/a.img"]
    # the same image with dynamic ownership: libvirt chowns it at start
    f2 = host(fake_root, dynamic=1)
    assert all(r.status is Status.PASS for r in perm_results(fake_root, f2, devs))


def test_permission_seclabel_relabel_no_disables_the_chown(fake_root):
    f = host(fake_root)
    fake_root.mkdir("/srv/vm", 0o755)
    fake_root.write("/srv/vm/a.img", b"x", 0o600)
    dev = ("    <disk type='file' device='disk'>\n      <source file='/srv/vm/a.img'>\n"
           "        <seclabel model='dac' relabel='no'/>\n      </source>\n"
           "      <target dev='vda' bus='virtio'/>\n    </disk>\n")
    [r] = perm_results(fake_root, f, dev)
    assert r.status is Status.FAIL and "does not relabel" in r.message


def test_permission_owner_bits_matter_even_with_chown(fake_root):
    f = host(fake_root)
    fake_root.mkdir("/srv/vm", 0o755)
    fake_root.write("/srv/vm/a.img", b"x", 0o044)  # owner has no access at all
    [r] = perm_results(fake_root, f, disk("vda", "virtio", source="/srv/vm/a.img"))
    assert r.status is Status.FAIL and "chmod u+rw /srv/vm/a.img" in r.evidence["commands"]


def test_permission_skips_when_qemu_user_is_missing(fake_root):
    fake_root.passwd([("root", 0, 0)])
    fake_root.group([("root", 0)])
    fake_root.write("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu"\n')
    [r] = perm_results(fake_root, facts(fake_root), disk("vda", "virtio"))
    assert r.status is Status.SKIP and "qemu-user-missing" in r.message


def test_disk_source_missing_quotes_the_qemu_uid_for_qcow2(fake_root):
    f = host(fake_root)
    drv = "      <driver name='qemu' type='qcow2'/>\n"
    [r] = fails(S.disk_source_missing, f, xml(devices=disk("vda", "virtio", driver=drv)))
    assert ("Cannot access storage file '/var/lib/libvirt/images/vda.img' (as uid:64055, gid:64055): "
            "No such file or directory") in r.message


def test_permission_plan_is_safe_setfacl_where_setfacl_exists(fake_root):
    f = host(fake_root)
    fake_root.write("/usr/bin/setfacl", "#!/bin/sh\n", 0o755)
    fake_root.mkdir("/home/alice", 0o700)
    fake_root.mkdir("/home/alice/vms", 0o755)
    fake_root.write("/home/alice/vms/vm.qcow2", b"x", 0o644)
    [r] = perm_results(fake_root, f, disk("vda", "virtio", source="/home/alice/vms/vm.qcow2"))
    # only the blocking directory, nothing above or below it, no chmod
    assert r.fix.auto is Auto.SAFE and r.fix.commands == ("setfacl -m u:libvirt-qemu:x /home/alice",)
    [action] = r.plan.actions
    assert action.touches == ("/home/alice",)  # its mode and ACL are backed up: rollback/undo restore them


def test_permission_grant_keeps_what_the_named_entry_already_gives(fake_root):
    f = host(fake_root, dynamic=0)
    fake_root.write("/usr/bin/setfacl", "#!/bin/sh\n", 0o755)
    d = fake_root.mkdir("/srv/vm", 0o700)
    acl = encode_acl_xattr([AclEntry(USER_OBJ, 7, None), AclEntry(USER, 4, QEMU_UID), AclEntry(GROUP_OBJ, 0, None),
                            AclEntry(MASK, 4, None), AclEntry(OTHER, 0, None)])
    try:
        os.setxattr(d, ACL_XATTR, acl)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on {d}: {exc}")
    fake_root.write("/srv/vm/a.img", b"x", 0o600)
    [r] = perm_results(fake_root, f, disk("vda", "virtio", source="/srv/vm/a.img"))
    assert r.fix.commands == ("setfacl -m u:libvirt-qemu:rx /srv/vm", "setfacl -m u:libvirt-qemu:rw /srv/vm/a.img")
    assert r.fix.auto is Auto.SAFE
