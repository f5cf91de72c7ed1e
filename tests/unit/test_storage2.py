"""Catalogue part 2, storage/images/snapshots/locking/helper daemons: checks/pools.py,
images.py, runstate.py, helperd.py, snapshots.py and their facts (facts/storage.py,
runstate.py, helperd.py) on fake roots. Image headers are built byte by byte as QEMU
writes them (docs/interop/qcow2.txt) and cross-checked against qemu-img when it is
installed; /proc/locks and fdinfo lines are the ones recorded live on the test host
(QEMU 7.2's qemu-io holding an image: OFDLCK READ on bytes 100-101, 103, 201, 203)."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from virtdoctor import domxml, engine
from virtdoctor.checks import helperd as H
from virtdoctor.checks import images as I
from virtdoctor.checks import pools as P
from virtdoctor.checks import runstate as R
from virtdoctor.checks import snapshots as S
from virtdoctor.facts import HostFacts
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.facts.runstate import RecordedRuntime, SnapshotInfo, parse_save_header
from virtdoctor.facts.storage import PoolInfo, Space, parse_header, parse_proc_locks, resolve_backing
from virtdoctor.model import Auto, Severity, Status

IMG = "/var/lib/libvirt/images"
PASSWD = [("root", 0, 0), ("libvirt-qemu", 64055, 64055)]


def qcow2(backing: str | None = None, fmt: str | None = None, size: int = 16 << 20) -> bytes:
    """A qcow2 v3 header: 104-byte header, extensions, then the backing name."""
    exts = b""
    if fmt:
        data = fmt.encode()
        exts += struct.pack(">II", 0xE2792ACA, len(data)) + data + b"\0" * ((8 - len(data) % 8) % 8)
    exts += struct.pack(">II", 0, 0)
    boff = 104 + len(exts) if backing else 0
    bname = backing.encode() if backing else b""
    hdr = QFI = b"QFI\xfb"
    hdr = QFI + struct.pack(">IQIIQ", 3, boff, len(bname), 16, size) + b"\0" * (100 - 32) + struct.pack(">I", 104)
    return hdr + exts + bname + b"\0" * 512


def dom_xml(name="vm", disks="", os_extra="", uefi=False):
    os_el = ("<os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>" if uefi
             else "<os><type arch='x86_64' machine='pc'>hvm</type></os>")
    return (f"<domain type='kvm'><name>{name}</name><memory unit='KiB'>65536</memory><vcpu>1</vcpu>{os_el}"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disks}</devices></domain>")


def fdisk(path, target="vda", fmt="qcow2", extra=""):
    drv = f"<driver name='qemu' type='{fmt}'/>" if fmt else ""
    return (f"<disk type='file' device='disk'>{drv}<source file='{path}'/><target dev='{target}' bus='virtio'/>"
            f"{extra}</disk>")


def mkfacts(root, domains=(), pools=None, runtime=None, processes=None):
    lv = RecordedLibvirt(domains=list(domains))
    if pools is not None:
        lv.pools_recorded = pools
    if runtime is not None:
        lv.runtime_recorded = runtime
    return HostFacts(root=str(root), uri="qemu:///system", libvirt_facts=lv, processes_override=processes)


def info(name, xml, state=5, reason=0, active=False):
    return DomainInfo(name=name, uuid="0" * 32, xml=xml, active=active, state=state, reason=reason,
                      live_xml=xml if active else None)


def run(chk, f, xml=None, inf=None):
    dom = domxml.parse_domain(xml, "vm.xml", info=inf) if xml is not None else None
    return engine.run_check(chk, f, dom)


def is_warn(f):
    return f.status is Status.FAIL and f.severity is Severity.WARNING


def status(findings):
    return [x.status for x in findings]


@pytest.fixture
def root(fake_root):
    fake_root.passwd(PASSWD)
    fake_root.group([("root", 0), ("libvirt-qemu", 64055), ("kvm", 994)])
    fake_root.mkdir(IMG)
    return fake_root


# -- facts -------------------------------------------------------------------------------
def test_header_parse_and_backing_resolution():
    h = parse_header("/i/top.qcow2", qcow2("base.qcow2", "qcow2"))
    assert (h.format, h.backing, h.backing_format, h.virtual_size) == ("qcow2", "base.qcow2", "qcow2", 16 << 20)
    assert parse_header("/x", qcow2("/b.img")).backing_format is None
    assert parse_header("/x", b"\0" * 4096).format == "raw"
    assert resolve_backing("/var/lib/libvirt/images/sub/top.qcow2", "../base.qcow2") == "/var/lib/libvirt/images/base.qcow2"
    assert resolve_backing("/a/top", "/abs/b") == "/abs/b"
    assert resolve_backing("/a/top", "nbd://host/x") is None and resolve_backing("/a/top", "json:{}") is None


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")
def test_header_parse_agrees_with_qemu_img(tmp_path):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", str(top)], check=True)
    h = parse_header(str(top), top.read_bytes()[:65536])
    assert (h.format, h.backing, h.backing_format, h.virtual_size) == ("qcow2", "base.qcow2", "qcow2", 16 << 20)


def test_proc_locks_lines_recorded_live():
    text = ("1: OFDLCK ADVISORY  READ -1 fe:00:1444081 203 203\n"
            "8: FLOCK  ADVISORY  WRITE 13813 fe:00:16670721 0 EOF\n"
            "9: POSIX  ADVISORY  WRITE 7066 fe:00:1444035 0 0\n"
            "9: -> POSIX  ADVISORY  WRITE 7070 fe:00:1444035 0 0\n")
    locks = parse_proc_locks(text)
    assert [(lk.kind, lk.pid, lk.ino, lk.start, lk.end) for lk in locks] == [
        ("OFDLCK", -1, 1444081, 203, 203), ("FLOCK", 13813, 16670721, 0, None), ("POSIX", 7066, 1444035, 0, 0)]


def test_save_header():
    data = b"LibvirtQemudSave" + struct.pack("=II", 2, 1000) + b"\0" * 80
    assert parse_save_header("/s", data, 2000, 0).truncated is False
    assert parse_save_header("/s", data, 500, 0).truncated is True
    assert parse_save_header("/s", b"LibvirtQemudPart" + data[16:], 5000, 0).complete is False
    assert parse_save_header("/s", b"garbage" * 10, 5000, 0).valid is False


# -- pools ---------------------------------------------------------------------------------
def test_pool_inactive_host_and_domain(root):
    vol = ("<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='data' volume='v1'/>"
           "<target dev='vda' bus='virtio'/></disk>")
    xml = dom_xml("web", vol)
    pools = [PoolInfo("data", "dir", False, False, "/srv/data"), PoolInfo("default", "dir", True, False, IMG),
             PoolInfo("spare", "dir", True, True, "/srv/spare")]
    root.mkdir("/srv/data")
    f = mkfacts(root, [info("web", xml)], pools)
    found = run(P.pool_inactive_host, f)
    by = {x.evidence.get("pool"): x for x in found}
    assert by["data"].status is Status.FAIL and "web" in by["data"].message
    assert [a.argv[-2:] for a in by["data"].plan.actions] == [["pool-start", "data"], ["pool-autostart", "data"]]
    assert by["data"].plan.auto is Auto.SAFE
    assert is_warn(by["default"]) and by["default"].plan.actions[0].argv[-1] == "default"
    assert "spare" not in by
    [d] = run(P.pool_inactive_domain, f, xml, info("web", xml))
    assert d.status is Status.FAIL and "storage pool 'data' containing volume 'v1' is not active" in d.message
    gone = mkfacts(root, [info("web", xml)], [])
    [d] = run(P.pool_inactive_domain, gone, xml, info("web", xml))
    assert "no storage pool with matching name 'data'" in d.message and d.plan.auto is Auto.MANUAL


def test_pool_target_missing_build_only_plain_dirs(root):
    root.mkdir("/srv")
    root.write("/etc/fstab", "/dev/sdb1 /mnt/usb ext4 defaults 0 2\n")
    root.write("/proc/mounts", "/dev/vda1 / ext4 rw 0 0\n")
    pools = [PoolInfo("gone", "dir", False, True, "/srv/gone"), PoolInfo("usb", "dir", False, True, "/mnt/usb/vms"),
             PoolInfo("ok", "dir", True, True, IMG)]
    found = run(P.pool_target_missing, mkfacts(root, pools=pools))
    by = {x.evidence["pool"]: x for x in found}
    assert set(by) == {"gone", "usb"}
    assert by["gone"].plan.auto is Auto.SAFE
    assert [a.argv[-2:] for a in by["gone"].plan.actions] == [["pool-build", "gone"], ["pool-start", "gone"]]
    assert "cannot open directory '/srv/gone': No such file or directory" in by["gone"].message
    assert by["usb"].plan.auto is Auto.MANUAL and by["usb"].plan.commands[0] == "mount /mnt/usb"


def test_space_exhausted_full_and_overcommitted(root):
    root.write(f"{IMG}/a.qcow2", qcow2(size=100 << 30))
    xml = dom_xml("a", fdisk(f"{IMG}/a.qcow2"))
    f = mkfacts(root, [info("a", xml)], [PoolInfo("default", "dir", True, True, IMG)])
    f.storage.space_override = {IMG: Space(IMG, 50 << 30, 10 << 20, 10 << 20)}
    [h] = run(P.space_host, f)
    assert h.status is Status.FAIL and "10 MiB available" in h.message and h.plan.auto is Auto.MANUAL
    [d] = run(P.space_domain, f, xml, info("a", xml))
    assert d.status is Status.FAIL
    f2 = mkfacts(root, [info("a", xml)], [])
    f2.storage.space_override = {IMG: Space(IMG, 50 << 30, 20 << 30, 20 << 30)}
    [h] = run(P.space_host, f2)
    assert is_warn(h) and "overcommitted" in h.message
    f3 = mkfacts(root, [info("a", xml)], [])
    f3.storage.space_override = {"/": Space("/", 500 << 30, 400 << 30, 400 << 30)}
    assert status(run(P.space_host, f3)) == [Status.PASS]


# -- images -----------------------------------------------------------------------------
def test_backing_file_missing_names_a_rebase_with_a_found_candidate(root):
    root.write(f"{IMG}/top.qcow2", qcow2("/old/place/base.qcow2", "qcow2"))
    root.write(f"{IMG}/base.qcow2", qcow2())
    xml = dom_xml("vm", fdisk(f"{IMG}/top.qcow2"))
    [r] = run(I.backing_file_missing, mkfacts(root), xml)
    assert r.status is Status.FAIL
    assert ("Cannot access backing file '/old/place/base.qcow2' of storage file "
            f"'{IMG}/top.qcow2' (as uid:64055, gid:64055): No such file or directory") in r.message
    assert r.plan.auto is Auto.MANUAL
    assert f"qemu-img rebase -u -f qcow2 -F qcow2 -b {IMG}/base.qcow2 {IMG}/top.qcow2" in r.plan.commands


def test_backing_file_relative_name_resolves_against_the_overlay_dir(root):
    root.write(f"{IMG}/sub/top.qcow2", qcow2("base.qcow2", "qcow2"))
    root.write(f"{IMG}/base.qcow2", qcow2())  # one level up: QEMU does not look there
    xml = dom_xml("vm", fdisk(f"{IMG}/sub/top.qcow2"))
    [r] = run(I.backing_file_missing, mkfacts(root), xml)
    assert r.status is Status.FAIL and r.evidence["missing"] == f"{IMG}/sub/base.qcow2"
    assert "relative name 'base.qcow2'" in r.message
    root.write(f"{IMG}/sub/base.qcow2", qcow2())
    assert status(run(I.backing_file_missing, mkfacts(root), xml)) == [Status.PASS]


def test_backing_format_missing_error_only_when_libvirt_refuses(root):
    root.write(f"{IMG}/b0.qcow2", qcow2())
    root.write(f"{IMG}/base.qcow2", qcow2(f"{IMG}/b0.qcow2", "qcow2"))
    root.write(f"{IMG}/top.qcow2", qcow2(f"{IMG}/base.qcow2"))  # no backing format
    root.write(f"{IMG}/top1.qcow2", qcow2(f"{IMG}/b0.qcow2"))  # no format, but the chain ends there
    [r] = run(I.backing_format_missing, mkfacts(root), dom_xml("vm", fdisk(f"{IMG}/top.qcow2")))
    assert r.status is Status.FAIL
    assert (f"format of backing image '{IMG}/base.qcow2' of image '{IMG}/top.qcow2' was not specified in the "
            "image metadata") in r.message
    assert r.plan.commands == [f"qemu-img rebase -u -f qcow2 -F qcow2 -b {IMG}/base.qcow2 {IMG}/top.qcow2"]
    [w] = run(I.backing_format_missing, mkfacts(root), dom_xml("vm", fdisk(f"{IMG}/top1.qcow2")))
    assert is_warn(w)
    assert status(run(I.backing_format_missing, mkfacts(root), dom_xml("vm", fdisk(f"{IMG}/base.qcow2")))) == [Status.PASS]


def test_disk_format_mismatch_both_ways(root):
    root.write(f"{IMG}/raw.img", b"\0" * 8192)
    root.write(f"{IMG}/q.qcow2", qcow2())
    xml = dom_xml("vm", fdisk(f"{IMG}/raw.img", "vda", "qcow2") + fdisk(f"{IMG}/q.qcow2", "vdb", "raw"))
    inf = info("vm", xml)
    found = run(I.disk_format_mismatch, mkfacts(root, [inf]), xml, inf)
    by = {x.evidence["target"]: x for x in found}
    assert "Image is not in qcow2 format" in by["vda"].message and by["vda"].evidence["real"] == "raw"
    assert by["vdb"].evidence["real"] == "qcow2" and by["vdb"].plan.auto is Auto.UNSAFE
    ok = dom_xml("vm", fdisk(f"{IMG}/raw.img", "vda", "raw") + fdisk(f"{IMG}/q.qcow2", "vdb", "qcow2"))
    assert status(run(I.disk_format_mismatch, mkfacts(root), ok)) == [Status.PASS]


def test_image_write_locked_names_the_holder(root):
    img = root.write(f"{IMG}/shared.qcow2", qcow2())
    st = os.stat(img)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    lines = [f"{n}: OFDLCK ADVISORY  READ -1 {dev}:{st.st_ino} {a} {b}"
             for n, (a, b) in enumerate([(203, 203), (201, 201), (103, 103), (100, 101)], 1)]
    root.write("/proc/locks", "\n".join(lines) + "\n9: POSIX  ADVISORY  WRITE 7066 fe:00:1444035 0 0\n")
    root.write("/proc/13857/comm", "qemu-io\n")
    root.write("/proc/13857/cmdline", b"qemu-io\0-f\0qcow2\0-c\0sleep 600000\0" + str(f"{IMG}/shared.qcow2").encode() + b"\0")
    root.write("/proc/13857/fdinfo/4", "pos:\t196616\nflags:\t02100002\nmnt_id:\t27\nino:\t%d\n" % st.st_ino
               + "".join(f"lock:\t{ln}\n" for ln in lines))
    root.write("/proc/1/comm", "init\n")
    root.mkdir("/proc/1/fdinfo")
    xml = dom_xml("vm", fdisk(f"{IMG}/shared.qcow2"))
    [r] = run(I.image_write_locked, mkfacts(root, [info("vm", xml)]), xml, info("vm", xml))
    assert r.status is Status.FAIL and "pid 13857 (qemu-io -f qcow2 -c sleep 600000" in r.message
    assert 'Failed to get "write" lock' in r.message and r.plan.auto is Auto.MANUAL
    assert r.plan.commands == ["ps -o pid,args -p 13857"]
    root.write("/proc/locks", "")
    other = info("other", dom_xml("other", fdisk(f"{IMG}/shared.qcow2")), state=1, active=True)
    [r] = run(I.image_write_locked, mkfacts(root, [info("vm", xml), other]), xml, info("vm", xml))
    assert r.status is Status.FAIL and "running domain other" in r.message
    shareable = dom_xml("vm", fdisk(f"{IMG}/shared.qcow2", extra="<shareable/>"))
    assert status(run(I.image_write_locked, mkfacts(root, [other]), shareable)) == [Status.PASS]


def test_nfs_root_squash(root):
    assert I.nfs_root_squash.slug == "nfs-root-squash"
    # /proc/mounts line format as the kernel prints an NFSv4.2 mount (no NFS server here: not recorded live)
    root.write("/proc/mounts", "/dev/vda1 / ext4 rw 0 0\nfiler:/export/vms /mnt/nfs nfs4 rw,relatime,vers=4.2,"
               "rsize=1048576,wsize=1048576,hard,proto=tcp,sec=sys,clientaddr=10.0.0.2,addr=10.0.0.1 0 0\n")
    img = root.write("/mnt/nfs/a.qcow2", qcow2(), mode=0o600)
    xml = dom_xml("vm", fdisk("/mnt/nfs/a.qcow2"))
    f = mkfacts(root)
    if os.stat(img).st_uid == 64055:  # pragma: no cover - the test never runs as QEMU's user
        pytest.skip("running as uid 64055")
    [r] = run(I.nfs_root_squash, f, xml)
    assert r.status is Status.FAIL and "root_squash" in r.message and "Permission denied" in r.message
    assert "no_root_squash" in r.plan.summary and "filer" in r.plan.summary
    os.chmod(img, 0o666)
    assert status(run(I.nfs_root_squash, mkfacts(root), xml)) == [Status.PASS]
    local = dom_xml("vm", fdisk(f"{IMG}/x.qcow2"))
    assert run(I.nfs_root_squash, mkfacts(root), local)[0].message == "no image on NFS"


# -- run-time state --------------------------------------------------------------------------
def test_paused_io_error_offers_resume_only_with_room(root):
    root.write(f"{IMG}/a.qcow2", qcow2())
    xml = dom_xml("a", fdisk(f"{IMG}/a.qcow2"))
    inf = info("a", xml, state=3, reason=5, active=True)
    f = mkfacts(root, [inf], runtime={"a": RecordedRuntime(disk_errors={"vda": "no space"})})
    f.storage.space_override = {IMG: Space(IMG, 1 << 30, 0, 0)}
    [r] = run(R.paused_io_error, f, xml, inf)
    assert r.status is Status.FAIL and "paused (I/O error)" in r.message and "vda: no space" in r.message
    assert r.plan.auto is Auto.MANUAL
    f2 = mkfacts(root, [inf], runtime={"a": RecordedRuntime(disk_errors={"vda": "no space"})})
    f2.storage.space_override = {IMG: Space(IMG, 10 << 30, 5 << 30, 5 << 30)}
    [r] = run(R.paused_io_error, f2, xml, inf)
    assert r.plan.auto is Auto.UNSAFE and r.plan.actions[0].argv[-2:] == ["resume", "a"]
    running = info("a", xml, state=1, reason=1, active=True)
    assert status(run(R.paused_io_error, mkfacts(root, [running]), xml, running)) == [Status.PASS]


def test_qemu_killed_reads_the_log(root):
    # the tail of a QEMU log after kill -9, recorded live on the test host (QEMU 7.2, libvirt 9.0.0)
    root.write("/var/log/libvirt/qemu/a.log",
               "2026-12-03 19:14:11.100+0000: starting up libvirt version: 9.0.0, package: 9.0.0-4+deb12u2\n"
               "char device redirected to /dev/pts/1 (label charserial0)\n"
               "2026-12-03 19:14:17.407+0000: shutting down, reason=crashed\n")
    xml = dom_xml("a")
    inf = info("a", xml, state=5, reason=3)
    [r] = run(R.qemu_killed_domain, mkfacts(root, [inf]), xml, inf)
    assert r.status is Status.FAIL and "shut off (crashed)" in r.message and "QEMU logged no signal" in r.message
    root.write("/var/log/kern.log", "Dec  3 19:00:00 h kernel: Out of memory: Killed process 4242 "
               "(qemu-system-x86) total-vm:2000000kB\n")
    [h] = run(R.qemu_killed_host, mkfacts(root, [inf]))
    assert h.status is Status.FAIL and "Killed process 4242" in h.message


def test_managed_save_checks(root):
    xml = dom_xml("a")
    inf = info("a", xml)
    f = mkfacts(root, [inf])
    assert status(run(R.managed_save, f, xml, inf)) == [Status.PASS]
    root.write("/var/lib/libvirt/qemu/save/a.save", b"LibvirtQemudPart" + struct.pack("=II", 2, 100) + b"\0" * 200)
    [r] = run(R.managed_save, mkfacts(root, [inf]), xml, inf)
    assert r.status is Status.FAIL and "save image is incomplete" in r.message
    assert "virsh managedsave-remove a" in r.plan.commands and r.plan.auto is Auto.MANUAL
    root.write("/var/lib/libvirt/qemu/save/a.save", b"LibvirtQemudSave" + struct.pack("=II", 2, 100) + b"\0" * 300)
    root.write("/var/log/libvirt/qemu/a.log",
               "2026-12-03 19:14:24.900+0000: starting up libvirt version: 9.0.0\n"
               "2026-12-03T19:14:24.993290Z qemu-system-x86_64: error while loading state section id 3(ram)\n"
               "2026-12-03T19:14:24.993897Z qemu-system-x86_64: load of migration failed: Invalid argument\n")
    [r] = run(R.managed_save, mkfacts(root, [inf]), xml, inf)
    assert r.status is Status.FAIL and "load of migration failed: Invalid argument" in r.message


# -- helper daemons and hooks -------------------------------------------------------------------
def test_virtlogd_and_virtlockd(root):
    root.mkdir("/run/libvirt")
    f = mkfacts(root, processes=[])
    [r] = run(H.virtlogd, f)
    assert r.status is Status.FAIL and "virtlogd-sock" in r.message and r.plan.auto is Auto.SAFE
    assert r.plan.actions[0].argv == ["virtlogd", "-d"]
    root.write("/etc/libvirt/qemu.conf", 'stdio_handler = "file"\n')
    assert status(run(H.virtlogd, mkfacts(root))) == [Status.PASS]
    assert status(run(H.virtlockd, mkfacts(root))) == [Status.PASS]
    root.write("/etc/libvirt/qemu.conf", 'lock_manager = "lockd"\n')
    root.write("/etc/init.d/virtlockd", "#!/bin/sh\n", mode=0o755)
    f = mkfacts(root, processes=[])
    [r] = run(H.virtlockd, f)
    assert r.status is Status.FAIL and r.plan.actions[0].argv == ["/etc/init.d/virtlockd", "start"]


def test_disk_lease_conflict(root):
    root.write("/etc/libvirt/qemu.conf", 'lock_manager = "lockd"\n')
    xml = dom_xml("clone", fdisk(f"{IMG}/a.qcow2"))
    src = info("src", dom_xml("src", fdisk(f"{IMG}/a.qcow2")), state=1, active=True)
    me = info("clone", xml)
    [r] = run(H.disk_lease_conflict, mkfacts(root, [src, me]), xml, me)
    assert r.status is Status.FAIL and f"Lockspace resource '{IMG}/a.qcow2' is locked" in r.message
    root.write("/etc/libvirt/qemu.conf", "")
    assert status(run(H.disk_lease_conflict, mkfacts(root, [src, me]), xml, me)) == [Status.PASS]


@pytest.mark.skipif(not os.path.exists("/bin/sh"), reason="no /bin/sh")
def test_hook_script(root, monkeypatch):
    root.write("/etc/libvirt/hooks/qemu", "#!/bin/sh\nif then fi\n", mode=0o755)
    root.write("/etc/libvirt/hooks/network", "#!/usr/bin/python9\nprint(1)\n", mode=0o755)
    root.write("/etc/libvirt/hooks/daemon", "#!/bin/sh\nexit 0\n", mode=0o644)
    root.write("/bin/sh", "", mode=0o755)
    f = mkfacts(root)
    # syntax checks run the host's sh on the fake root's file (the root is not live)
    monkeypatch.setattr(type(f), "is_live", property(lambda self: True))
    found = run(H.hook_script, f)
    by = {x.evidence["hook"]: x for x in found}
    assert by["/etc/libvirt/hooks/qemu"].status is Status.FAIL and "syntax error" in by["/etc/libvirt/hooks/qemu"].message
    assert "/usr/bin/python9 does not exist" in by["/etc/libvirt/hooks/network"].message
    assert is_warn(by["/etc/libvirt/hooks/daemon"])


def test_hook_failure_in_daemon_log_after_the_hook_changed(root):
    root.write("/etc/libvirt/hooks/qemu", "#!/bin/false\n", mode=0o755)
    os.utime(root.path("/etc/libvirt/hooks/qemu"), (1700000000, 1700000000))
    root.write("/bin/false", "", mode=0o755)
    line = ("2026-12-03 19:30:00.000+0000: 7071: error : virHookCall:404 : Hook script execution failed: internal "
            "error: Child process (LC_ALL=C PATH=/usr/bin /etc/libvirt/hooks/qemu vm prepare begin -) unexpected "
            "exit status 1")
    root.write("/var/log/libvirt/libvirtd.log", line + "\n")
    [r] = run(H.hook_script, mkfacts(root))
    assert r.status is Status.FAIL and "unexpected exit status 1" in r.message


# -- snapshots -----------------------------------------------------------------------------------
def test_snapshot_checks(root):
    efi = dom_xml("u", fdisk(f"{IMG}/u.qcow2"), uefi=True)
    inf = info("u", efi)
    snaps = {"u": RecordedRuntime(snapshots=[SnapshotInfo("s0", "no", (("vda", "internal"),))])}
    [r] = run(S.internal_uefi, mkfacts(root, [inf], runtime=snaps), efi, inf)
    assert is_warn(r) and "pflash based firmware are not supported" in r.message
    assert status(run(S.internal_uefi, mkfacts(root, [inf], runtime={}), efi, inf)) == [Status.PASS]
    raw = dom_xml("r", fdisk(f"{IMG}/r.qcow2") + fdisk(f"{IMG}/d.img", "vdb", "raw"))
    rinf = info("r", raw)
    snaps = {"r": RecordedRuntime(snapshots=[SnapshotInfo("s0", "internal", (("vda", "internal"),))])}
    [r] = run(S.internal_raw, mkfacts(root, [rinf], runtime=snaps), raw, rinf)
    assert is_warn(r) and "internal snapshot for disk vdb unsupported for storage type raw" in r.message
    ext = {"r": RecordedRuntime(snapshots=[SnapshotInfo("e1", "no", (("vda", "external"),))])}
    [r] = run(S.revert_external, mkfacts(root, [rinf], runtime=ext), raw, rinf)
    assert is_warn(r) and "revert to external snapshot not supported yet" in r.message
    assert "virsh snapshot-delete r e1 --metadata" in r.plan.commands


def test_fix_recheck_of_one_keyed_result_ignores_the_others(root):
    """`fix` re-checks the pool it started, not every pool of the same (host) subject: a second
    broken pool must not roll the first one's fix back (seen live: leftover pools on the host)."""
    from types import SimpleNamespace

    from virtdoctor.commands import fix as fixcmd

    pools = [PoolInfo("mine", "dir", True, True, "/srv/mine"), PoolInfo("other", "dir", False, True, "/srv/other")]
    ctx = SimpleNamespace(facts=lambda: mkfacts(root, pools=pools), knowledge={})
    ok, _ = fixcmd.recheck_for(ctx, P.pool_inactive_host, "host", None, key="mine")()
    assert ok
    ok, msg = fixcmd.recheck_for(ctx, P.pool_inactive_host, "host", None, key="other")()
    assert not ok and "other" in msg
    ok, msg = fixcmd.recheck_for(ctx, P.pool_inactive_host, "host", None)()  # unkeyed: any failure counts
    assert not ok
    [f] = run(P.pool_inactive_host, mkfacts(root, pools=pools))
    assert f.key == "other"
