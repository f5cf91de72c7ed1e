"""Catalogue part 2 (storage, images, snapshots, locking, helper daemons) on the real daemon.

Each test breaks a tiny guest the way the catalogue says, shows libvirt's or QEMU's real
text (a start through libvirt-python), runs virtdoctor (`diagnose NAME --start` ranks the
slug first for start failures; `check` shows the finding otherwise), applies the fix
(`fix --only SLUG --yes` for safe/unsafe plans, the printed commands for manual ones) and
proves the guest starts (vmhelpers.start_and_prove). Everything is named vdtest-st2-*;
fixtures and `finally` blocks put the host back even when an assertion fails.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

import vmhelpers

pytestmark = pytest.mark.live
IMG = vmhelpers.IMAGES_DIR
POOL = "vdtest-st2-pool"
POOL_DIR = Path("/var/tmp/vdtest-st2-pool")


def start_error(dom) -> str:
    import libvirt

    try:
        dom.create()
    except libvirt.libvirtError as exc:
        return exc.get_error_message()
    dom.destroy()
    pytest.fail(f"{dom.name()} started; expected a failure")


def diagnose_first(run_virtdoctor, name: str, slug: str) -> dict:
    rc, out, err = run_virtdoctor("--format", "json", "diagnose", name, "--start")
    assert out.strip(), f"diagnose printed nothing ({rc}): {err}"
    doc = json.loads(out)
    causes = doc["causes"]
    assert causes and causes[0]["id"] == slug, (
        f"start: {doc.get('start')}; causes: " + "; ".join(f"{c['id']}={c['score']}({c['tier']})" for c in causes))
    print(f"\n{name}: start error {doc['start'].get('error')!r}\n  first cause {slug} ({causes[0]['tier']})")
    return causes[0]


def findings(run_virtdoctor, *args: str) -> list[dict]:
    rc, out, err = run_virtdoctor("--format", "json", "check", *args)
    assert out.strip(), f"check printed nothing ({rc}): {err}"
    doc = json.loads(out)
    return doc["findings"] if isinstance(doc, dict) else doc


def failing(run_virtdoctor, slug: str, *args: str) -> list[dict]:
    return [f for f in findings(run_virtdoctor, "--only", slug, *args) if f["id"] == slug and f["status"] == "fail"]


def fix(run_virtdoctor, slug: str, *args: str, about: str | None = None) -> list[dict]:
    """`fix --only SLUG ARGS --yes`: its actions for SLUG (those naming `about` only: this
    host may carry other broken pools or networks that are not this test's)."""
    rc, out, err = run_virtdoctor("--format", "json", "fix", "--only", slug, *args, "--yes")
    assert out.strip(), f"fix printed nothing ({rc}): {err}"
    actions = [a for a in json.loads(out)["actions"] if a["id"] == slug and (about is None or about in a["summary"])]
    # a twin finding (host and domain) that the first plan repaired too shows as passing now
    assert any(a["status"] == "fixed" for a in actions), f"fix {slug} ({rc}): {actions} {err}"
    assert all(a["status"] == "fixed" or a.get("passes") for a in actions), f"fix {slug} ({rc}): {actions} {err}"
    return actions


def run_printed(commands: list[str], only=lambda c: True) -> None:
    for c in commands:
        if only(c):
            proc = subprocess.run(shlex.split(c), capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, f"{c}: {proc.stderr}"


@pytest.fixture
def st2(libvirt_conn, vm_xml):
    """define(name, xml) and image(name) helpers; everything removed afterwards."""
    names: list[str] = []
    files: list[Path] = []
    conns = []

    class H:
        _conn = libvirt_conn

        @classmethod
        def fresh(cls):
            """A new connection each time: tests restart the daemon, which kills old ones
            (a dead connection only says so on its next call)."""
            conns.append(vmhelpers.wait_for_uri(vmhelpers.live_uri(), 60))
            return conns[-1]

        conn = property(lambda self: self.fresh())

        @classmethod
        def define(cls, xml: str):
            dom = cls.fresh().defineXML(xml)
            names.append(dom.name())
            return dom

        @staticmethod
        def file(path) -> Path:
            files.append(Path(path))
            return Path(path)

        @staticmethod
        def qcow2(name: str, *args: str) -> Path:
            p = H.file(IMG / name)
            p.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, str(p), *(["16M"] if "-b" not in args else [])],
                           check=True, capture_output=True, text=True, timeout=30)
            return p

        @classmethod
        def vm(cls, name: str, disk=None, **kw):
            return cls.define(vm_xml(name, disk=disk, **kw))

    yield H()
    for c in conns:
        try:
            c.close()
        except Exception:
            pass
    conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 60)
    try:
        for n in names:
            vmhelpers.undefine_domain(conn, n)
    finally:
        conn.close()
    for f in files:
        f.unlink(missing_ok=True)


# --------------------------------------------------------------------------- pools

def _drop_pool(conn):
    import libvirt

    try:
        p = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        return
    if p.isActive():
        p.destroy()
    p.undefine()


@pytest.fixture
def pool(libvirt_conn):
    _drop_pool(libvirt_conn)
    shutil.rmtree(POOL_DIR, ignore_errors=True)
    POOL_DIR.mkdir(parents=True)
    p = libvirt_conn.storagePoolDefineXML(f"<pool type='dir'><name>{POOL}</name><target><path>{POOL_DIR}</path>"
                                          "</target></pool>")
    p.create()
    p.createXML("<volume><name>v1.qcow2</name><capacity unit='M'>16</capacity><target><format type='qcow2'/>"
                "</target></volume>")
    yield p
    conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 60)
    try:
        _drop_pool(conn)
    finally:
        conn.close()
    shutil.rmtree(POOL_DIR, ignore_errors=True)


VOLUME_DISK = (f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
               f"<source pool='{POOL}' volume='v1.qcow2'/><target dev='vda' bus='virtio'/></disk>")


def test_storage_pool_inactive_then_target_missing(st2, pool, run_virtdoctor):
    import libvirt

    name = "vdtest-st2-pool"
    dom = st2.vm(name, devices=VOLUME_DISK)
    pool.destroy()
    err = start_error(dom)
    assert err == f"unsupported configuration: storage pool '{POOL}' containing volume 'v1.qcow2' is not active", err
    cause = diagnose_first(run_virtdoctor, name, "storage-pool-inactive")
    assert cause["fix"]["auto"] == "safe" and cause["fix"]["command"].startswith(
        "virtdoctor fix --only storage-pool-inactive"), cause["fix"]
    fix(run_virtdoctor, "storage-pool-inactive", "--domain", name, about=POOL)
    conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30)
    p = conn.storagePoolLookupByName(POOL)
    assert p.isActive() and p.autostart()
    vmhelpers.start_and_prove(conn.lookupByName(name))

    # the target directory goes away: the pool cannot start; pool-build recreates it
    p.destroy()
    shutil.rmtree(POOL_DIR)
    with pytest.raises(libvirt.libvirtError) as exc:
        p.create()
    text = exc.value.get_error_message()
    assert text == f"cannot open directory '{POOL_DIR}': No such file or directory", text
    [f] = [f for f in failing(run_virtdoctor, "storage-pool-target-missing") if f["evidence"]["pool"] == POOL]
    assert f["fix"]["auto"] == "safe" and f["fix"]["commands"][0].endswith(f"pool-build {POOL}")
    fix(run_virtdoctor, "storage-pool-target-missing", about=POOL)
    assert p.isActive() and POOL_DIR.is_dir()
    p.createXML("<volume><name>v1.qcow2</name><capacity unit='M'>16</capacity><target><format type='qcow2'/>"
                "</target></volume>")
    vmhelpers.start_and_prove(conn.lookupByName(name))
    conn.close()


# --------------------------------------------------------------------------- backing chains

def test_backing_file_missing(st2, run_virtdoctor):
    name = "vdtest-st2-bfm"
    base = st2.qcow2("vdtest-st2-base.qcow2")
    top = st2.qcow2("vdtest-st2-top.qcow2", "-F", "qcow2", "-b", str(base))
    moved = st2.file(IMG / "vdtest-st2-moved" / base.name)
    moved.parent.mkdir(exist_ok=True)
    base.rename(moved)
    try:
        dom = st2.vm(name, disk=top)
        err = start_error(dom)
        assert re.fullmatch(rf"Cannot access backing file '{re.escape(str(base))}' of storage file "
                            rf"'{re.escape(str(top))}' \(as uid:\d+, gid:\d+\): No such file or directory", err), err
        cause = diagnose_first(run_virtdoctor, name, "backing-file-missing")
        assert cause["tier"] == "confirmed"
        # no file of that name anywhere virtdoctor looks: the printed rebase needs the real path
        [rebase] = [c for c in cause["fix"]["commands"] if c.startswith("qemu-img rebase")]
        assert rebase == f"qemu-img rebase -u -f qcow2 -F qcow2 -b /path/to/{base.name} {top}", rebase
        run_printed([rebase.replace(f"/path/to/{base.name}", str(moved))])
        assert not failing(run_virtdoctor, "backing-file-missing", "--domain", name)
        vmhelpers.start_and_prove(dom)
    finally:
        shutil.rmtree(moved.parent, ignore_errors=True)


def _strip_backing_format(path: Path) -> None:
    """Make the backing-format header extension unknown (magic 0xe2792aca -> another), as
    an overlay made by an old qemu-img without -F looks; QEMU 7.2 refuses -b without -F."""
    with open(path, "r+b") as f:
        h = f.read(4096)
        off = struct.unpack(">I", h[100:104])[0]
        while True:
            magic, ln = struct.unpack(">II", h[off:off + 8])
            if magic == 0:
                raise AssertionError("no backing format extension")
            if magic == 0xE2792ACA:
                f.seek(off)
                f.write(struct.pack(">I", 0x6B6B6B6B))
                return
            off += 8 + ((ln + 7) & ~7)


def test_backing_format_missing(st2, run_virtdoctor):
    name = "vdtest-st2-bfmt"
    b0 = st2.qcow2("vdtest-st2-b0.qcow2")
    base = st2.qcow2("vdtest-st2-b1.qcow2", "-F", "qcow2", "-b", str(b0))
    top = st2.qcow2("vdtest-st2-b2.qcow2", "-F", "qcow2", "-b", str(base))
    _strip_backing_format(top)
    dom = st2.vm(name, disk=top)
    err = start_error(dom)
    assert err == (f"Requested operation is not valid: format of backing image '{base}' of image '{top}' was not "
                   "specified in the image metadata (See https://libvirt.org/kbase/backing_chains.html for "
                   "troubleshooting)"), err
    cause = diagnose_first(run_virtdoctor, name, "backing-format-missing")
    assert cause["fix"]["commands"] == [f"qemu-img rebase -u -f qcow2 -F qcow2 -b {base} {top}"]
    run_printed(cause["fix"]["commands"])
    assert not failing(run_virtdoctor, "backing-format-missing", "--domain", name)
    vmhelpers.start_and_prove(dom)


# --------------------------------------------------------------------------- image format, locks

def test_disk_format_mismatch(st2, run_virtdoctor):
    name = "vdtest-st2-fmt"
    raw = st2.file(IMG / "vdtest-st2-raw.img")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    dom = st2.vm(name, disk=raw)  # vm_xml declares qcow2
    err = start_error(dom)
    # libvirt wraps QEMU's last words either way, depending on when QEMU exits
    assert re.match(r"internal error: (qemu unexpectedly closed the monitor|process exited while connecting to "
                    r"monitor): ", err) and err.endswith("Image is not in qcow2 format"), err
    cause = diagnose_first(run_virtdoctor, name, "disk-format-mismatch")
    assert cause["fix"]["auto"] == "unsafe"
    fix(run_virtdoctor, "disk-format-mismatch", "--domain", name, "--unsafe")
    conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30)
    dom = conn.lookupByName(name)
    assert "type='raw'" in dom.XMLDesc(0)
    vmhelpers.start_and_prove(dom)
    conn.close()


def test_image_write_locked_names_the_holder(st2, run_virtdoctor):
    name = "vdtest-st2-lock"
    img = st2.qcow2("vdtest-st2-lock.qcow2")
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 600000", str(img)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while f":{os.stat(img).st_ino} " not in Path("/proc/locks").read_text():
            assert time.monotonic() < deadline and holder.poll() is None, "qemu-io did not lock the image"
            time.sleep(0.05)
        probe = subprocess.run(["qemu-img", "info", str(img)], capture_output=True, text=True)
        assert "Failed to get shared \"write\" lock" in probe.stderr, probe.stderr
        dom = st2.vm(name, disk=img)
        err = start_error(dom)
        assert 'Failed to get "write" lock' in err and f"Is another process using the image [{img}]?" in err, err
        cause = diagnose_first(run_virtdoctor, name, "image-write-locked")
        [f] = failing(run_virtdoctor, "image-write-locked", "--domain", name)
        assert f"pid {holder.pid} (qemu-io -f qcow2 -c sleep 600000 {img})" in f["message"], f["message"]
        assert f["fix"]["commands"] == [f"ps -o pid,args -p {holder.pid}"]
    finally:
        holder.send_signal(signal.SIGTERM)  # the printed step: stop the holder (ours, by pid)
        holder.wait(10)
    assert not failing(run_virtdoctor, "image-write-locked", "--domain", name)
    vmhelpers.start_and_prove(dom)


# --------------------------------------------------------------------------- run-time state

def test_qemu_killed_and_managed_save(st2, run_virtdoctor):
    import libvirt

    name = "vdtest-st2-life"
    dom = st2.vm(name, disk=st2.qcow2("vdtest-st2-life.qcow2"))
    dom.create()
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # our guest's QEMU, by pid
    deadline = time.monotonic() + 10
    while dom.state()[0] != libvirt.VIR_DOMAIN_SHUTOFF:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]
    assert "shutting down, reason=crashed" in Path(f"/var/log/libvirt/qemu/{name}.log").read_text()
    [f] = [f for f in failing(run_virtdoctor, "qemu-process-killed", "--domain", name)
           if f["subject"] == f"domain:{name}"]
    assert "shut off (crashed)" in f["message"]
    vmhelpers.start_and_prove(dom)

    # managed save, then the image is damaged: the restore fails
    dom.create()
    dom.managedSave(0)
    save = Path(f"/var/lib/libvirt/qemu/save/{name}.save")
    with open(save, "r+b") as fh:
        fh.truncate(300000)
    err = start_error(dom)
    assert "load of migration failed" in err, err
    cause = diagnose_first(run_virtdoctor, name, "managed-save-restore-failed")
    assert f"virsh managedsave-remove {name}" in cause["fix"]["commands"]
    run_printed(cause["fix"]["commands"], only=lambda c: "managedsave-remove" in c)
    assert not save.exists()
    vmhelpers.start_and_prove(dom)


# --------------------------------------------------------------------------- snapshots

def test_snapshot_limits(st2, run_virtdoctor):
    import libvirt

    efi = st2.vm("vdtest-st2-efi", disk=st2.qcow2("vdtest-st2-efi.qcow2"), machine="q35", firmware="efi")
    efi.snapshotCreateXML("<domainsnapshot><name>s0</name></domainsnapshot>", 0)  # shut off: 9.0.0 accepts
    efi.create()
    try:
        with pytest.raises(libvirt.libvirtError) as exc:
            efi.snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>", 0)
        assert exc.value.get_error_message() == ("Operation not supported: internal snapshots of a VM with pflash "
                                                 "based firmware are not supported")
    finally:
        efi.destroy()
    [f] = failing(run_virtdoctor, "snapshot-internal-uefi", "--domain", "vdtest-st2-efi")
    assert "internal snapshots (s0)" in f["message"]
    efi.snapshotLookupByName("s0").delete(0)

    raw = st2.file(IMG / "vdtest-st2-data.img")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "8M"], check=True)
    data = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{raw}'/>"
            "<target dev='vdb' bus='virtio'/></disk>")
    # internal snapshots taken while the guest had only its qcow2 disk; then a raw data disk is added
    rootimg = st2.qcow2("vdtest-st2-rawroot.qcow2")
    r = st2.vm("vdtest-st2-raw", disk=rootimg)
    r.snapshotCreateXML("<domainsnapshot><name>s0</name></domainsnapshot>", 0)
    r = st2.conn.defineXML(r.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace("</devices>", data + "</devices>"))
    with pytest.raises(libvirt.libvirtError) as exc:
        r.snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>", 0)
    assert exc.value.get_error_message() == ("unsupported configuration: internal snapshot for disk vdb unsupported "
                                             "for storage type raw")
    [f] = failing(run_virtdoctor, "snapshot-internal-raw-disk", "--domain", "vdtest-st2-raw")
    assert "internal snapshot for disk vdb unsupported for storage type raw" in f["message"]
    assert "virsh snapshot-create-as vdtest-st2-raw SNAP --disk-only --atomic" in f["fix"]["commands"]
    r.snapshotLookupByName("s0").delete(0)

    # external snapshots: created fine, but 9.0.0 cannot revert to them
    orig = st2.qcow2("vdtest-st2-ext.qcow2")
    e = st2.vm("vdtest-st2-ext", disk=orig)
    e.create()
    try:
        snap = e.snapshotCreateXML("<domainsnapshot><name>e1</name></domainsnapshot>",
                                   libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        [overlay] = re.findall(r"<source file='([^']+)'", snap.getXMLDesc(0))[:1]
        st2.file(overlay)
        with pytest.raises(libvirt.libvirtError) as exc:
            e.revertToSnapshot(snap, 0)
        assert exc.value.get_error_message() == ("unsupported configuration: revert to external snapshot not "
                                                 "supported yet")
    finally:
        e.destroy()
    [f] = failing(run_virtdoctor, "snapshot-revert-external", "--domain", "vdtest-st2-ext")
    assert "e1" in f["message"] and "virsh snapshot-delete vdtest-st2-ext e1 --metadata" in f["fix"]["commands"]
    # the manual revert it describes: the disk back at the image the snapshot started from, metadata dropped
    xml = e.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace(f"<source file='{overlay}'", f"<source file='{orig}'")
    xml = re.sub(r"<backingStore type=.*?</backingStore>\s*", "", xml, flags=re.S)  # the chain the overlay added
    run_printed([c for c in f["fix"]["commands"] if "snapshot-delete" in c])
    e = st2.conn.defineXML(xml)
    assert not failing(run_virtdoctor, "snapshot-revert-external", "--domain", "vdtest-st2-ext")
    vmhelpers.start_and_prove(e)


# --------------------------------------------------------------------------- helper daemons, hooks

def restart_libvirtd(guard) -> None:
    guard.stop("libvirtd")
    proc = subprocess.run(["libvirtd", "-d"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    vmhelpers.wait_for_uri(vmhelpers.live_uri(), 60).close()


def test_virtlogd_unavailable(st2, daemon_guard, run_virtdoctor):
    name = "vdtest-st2-logd"
    dom = st2.vm(name, disk=st2.qcow2("vdtest-st2-logd.qcow2"))
    daemon_guard.stop("virtlogd")
    err = start_error(dom)
    # libvirt 9.0.0 reports the socket error alone (the "can't connect to virtlogd" prefix is not in it)
    assert re.fullmatch(r"Failed to connect socket to '/run/libvirt/virtlogd-sock': "
                        r"(No such file or directory|Connection refused)", err), err
    cause = diagnose_first(run_virtdoctor, name, "virtlogd-unavailable")
    assert cause["fix"]["auto"] == "safe"
    fix(run_virtdoctor, "virtlogd-unavailable")
    assert daemon_guard.pids("virtlogd")
    vmhelpers.start_and_prove(st2.conn.lookupByName(name))


def test_hook_script_failed(st2, daemon_guard, file_guard, run_virtdoctor):
    name = "vdtest-st2-hook"
    hook = Path("/etc/libvirt/hooks/qemu")
    file_guard(hook.parent)
    moved = Path("/root/qemu-hook.disabled")
    file_guard(moved)
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\necho vdtest hook refuses >&2\nexit 1\n")
    hook.chmod(0o755)
    try:
        restart_libvirtd(daemon_guard)  # libvirt finds hooks at daemon start
        dom = st2.vm(name, disk=st2.qcow2("vdtest-st2-hook.qcow2"))
        err = start_error(dom)
        assert re.fullmatch(r"Hook script execution failed: internal error: Child process \(LC_ALL=C PATH=\S+ "
                            r"(?:\w+=\S* )*"
                            rf"/etc/libvirt/hooks/qemu {name} prepare begin -\) unexpected exit status 1: "
                            r"vdtest hook refuses\s*", err), err
        cause = diagnose_first(run_virtdoctor, name, "hook-script-failed")
        assert cause["tier"] == "confirmed", cause
        [mv] = [c for c in cause["fix"]["commands"] if c.startswith("mv ")]
        assert mv == f"mv {hook} {moved}", mv
        run_printed([mv])
        restart_libvirtd(daemon_guard)
        vmhelpers.start_and_prove(st2.conn.lookupByName(name))
    finally:
        hook.unlink(missing_ok=True)
        moved.unlink(missing_ok=True)
        restart_libvirtd(daemon_guard)


def test_virtlockd_and_disk_lease_conflict(st2, daemon_guard, file_guard, run_virtdoctor):
    conf = Path("/etc/libvirt/qemu.conf")
    guard = file_guard(conf)
    img = st2.qcow2("vdtest-st2-lease.qcow2")
    try:
        conf.write_text(conf.read_text() + '\nlock_manager = "lockd"\n')
        daemon_guard.stop("virtlockd")
        restart_libvirtd(daemon_guard)
        a = st2.vm("vdtest-st2-lease-a", disk=img)
        err = start_error(a)
        assert re.search(r"Failed to connect socket to '/run/libvirt/virtlockd-sock': "
                         r"(No such file or directory|Connection refused)", err), err
        cause = diagnose_first(run_virtdoctor, "vdtest-st2-lease-a", "virtlockd-unavailable")
        assert cause["fix"]["auto"] == "safe"
        fix(run_virtdoctor, "virtlockd-unavailable")
        assert daemon_guard.pids("virtlockd")
        a = st2.conn.lookupByName("vdtest-st2-lease-a")
        a.create()  # A holds the lease
        b = st2.vm("vdtest-st2-lease-b", disk=img)  # a clone that kept the source path
        err = start_error(b)
        # on this host (direct lockspace, auto_disk_leases) QEMU's own image lock refuses B before
        # virtlockd's "resource busy: Lockspace resource '...' is locked" shows: image-write-locked
        # names A, and disk-lease-conflict's check fails too
        assert 'Failed to get "write" lock' in err, err
        cause = diagnose_first(run_virtdoctor, "vdtest-st2-lease-b", "image-write-locked")
        assert "virsh shutdown vdtest-st2-lease-a" in cause["fix"]["commands"]
        [f] = failing(run_virtdoctor, "disk-lease-conflict", "--domain", "vdtest-st2-lease-b")
        assert "leased by running domain vdtest-st2-lease-a" in f["message"]
        a.destroy()  # the printed step stops A (a tiny guest has no OS to shut down: destroy it)
        vmhelpers.start_and_prove(st2.conn.lookupByName("vdtest-st2-lease-b"))
    finally:
        conn = st2.conn
        for n in ("vdtest-st2-lease-a", "vdtest-st2-lease-b"):
            vmhelpers.undefine_domain(conn, n)
        guard.restore()
        restart_libvirtd(daemon_guard)  # without lockd again; daemon_guard then stops our virtlockd


# --------------------------------------------------------------------------- a full filesystem

def test_space_exhausted_pauses_the_guest(st2, run_virtdoctor):
    """A tiny real Linux guest (tinyguest: the distribution kernel, a busybox initramfs) writes
    48 MiB to its disk, a thin qcow2 on a 64 MiB tmpfs that a 40 MiB file already fills:
    QEMU's default werror=enospc pauses it."""
    import libvirt
    import tinyguest

    name = "vdtest-st2-full"
    mnt = Path("/var/tmp/vdtest-st2-full")
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "vdtest-st2-full", str(mnt)], check=True)
    try:
        filler = mnt / "vdtest-filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=40"], check=True, capture_output=True)
        img = mnt / "vdtest-st2-full.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "1G"], check=True)
        disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{img}'/>"
                "<target dev='vda' bus='virtio'/></disk>")
        snippet = "dd if=/dev/zero of=/dev/vda bs=1M count=48 conv=fsync; echo vdtest-st2-done"
        # TCG, tinyguest's default: its direct kernel boot printed nothing under nested KVM here
        dom = st2.define(tinyguest.domain_xml(name, snippet, balloon=None, devices=disk))
        dom.create()
        deadline = time.monotonic() + 120
        while dom.state() != [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR]:
            assert time.monotonic() < deadline, f"not paused on an I/O error: {dom.state()}"
            assert dom.isActive()
            time.sleep(0.2)
        assert dom.diskErrors(0) == {"vda": libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE}
        virsh = subprocess.run(["virsh", "domstate", name, "--reason"], capture_output=True, text=True)
        assert virsh.stdout.strip() == "paused (I/O error)", virsh.stdout
        blk = subprocess.run(["virsh", "domblkerror", name], capture_output=True, text=True)
        assert blk.stdout.strip() == "vda: no space", blk.stdout

        [p] = failing(run_virtdoctor, "domain-paused-io-error", "--domain", name)
        assert "vda: no space" in p["message"] and p["fix"]["auto"] == "manual", p
        space = [f for f in failing(run_virtdoctor, "storage-space-exhausted", "--domain", name)
                 if f["subject"] == f"domain:{name}"]
        assert space and "available" in space[0]["message"], space
        # the manual step: free space (our own filler file); then the resume is offered (unsafe)
        filler.unlink()
        [p] = failing(run_virtdoctor, "domain-paused-io-error", "--domain", name)
        assert p["fix"]["auto"] == "unsafe", p
        fix(run_virtdoctor, "domain-paused-io-error", "--domain", name, "--unsafe")
        tinyguest.wait_for_serial(name, "vdtest-st2-done", 60)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        dom.destroy()
    finally:
        conn = st2.conn
        vmhelpers.undefine_domain(conn, name)
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)
