"""remedy.py on fake roots: actions, backups, atomic writes keeping mode and owner, the
re-check and the rollback (contents, modes, owners, ACLs, created paths), and the lock that
keeps two fix runs from interleaving (two real processes)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from virtdoctor import remedy
from virtdoctor.facts.accounts import Accounts
from virtdoctor.facts.files import ACL_XATTR
from virtdoctor.model import Auto, ToolError
from virtdoctor.remedy import (Action, ActionError, Env, FixLock, MakeDir, RemoveAcl, RunCommand, SetConfKey,
                               SetGroup, SetMode, WriteFile, apply_plan, plan)

ACCOUNTS = Accounts.load("root:x:0:0::/root:/bin/sh\n", "root:x:0:\nkvm:x:107:\nlibvirt:x:108:\n")
PASSES = lambda: (True, "")  # noqa: E731
FAILS = lambda: (False, "still broken")  # noqa: E731


@pytest.fixture
def env(fake_root):
    return Env(root=str(fake_root), accounts=ACCOUNTS)


@pytest.fixture
def backups(tmp_path):
    return str(tmp_path / "backups")


def state(path: Path) -> dict:
    """What rollback must put back: bytes, mode, owner, ACL."""
    st = os.lstat(path)
    try:
        acl = os.getxattr(path, ACL_XATTR)
    except OSError:
        acl = None
    data = path.read_bytes() if path.is_file() else None
    return {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "acl": acl, "data": data}


def has_acl_support(path) -> bool:
    if shutil.which("setfacl") is None:
        return False
    return subprocess.run(["setfacl", "-m", "u:1000:r", str(path)], capture_output=True).returncode == 0


# -- single actions -------------------------------------------------------------

def test_write_file_creates_with_mode_and_shows_a_diff(env, fake_root):
    act = WriteFile("/etc/udev/rules.d/65-kvm.rules", 'KERNEL=="kvm", GROUP="kvm"\n', 0o640)
    assert act.touches == ("/etc/udev/rules.d/65-kvm.rules",)
    assert act.command() == "write /etc/udev/rules.d/65-kvm.rules (1 lines)"
    diff = act.preview(env)
    assert diff.startswith("--- /dev/null\n+++ b/etc/udev/rules.d/65-kvm.rules\n")
    assert '+KERNEL=="kvm", GROUP="kvm"' in diff
    act.apply(env)
    real = fake_root.path("/etc/udev/rules.d/65-kvm.rules")
    assert real.read_text() == 'KERNEL=="kvm", GROUP="kvm"\n'
    assert oct(real.stat().st_mode & 0o7777) == oct(0o640)


def test_write_file_is_atomic_and_keeps_mode_and_owner(env, fake_root):
    real = fake_root.write("/etc/libvirt/qemu.conf", "old\n", mode=0o600)
    os.chown(real, 1234, 5678)
    inode = real.stat().st_ino
    WriteFile("/etc/libvirt/qemu.conf", "new\n", 0o644).apply(env)
    st = real.stat()
    assert real.read_text() == "new\n"
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert st.st_ino != inode  # a new file renamed over the old one
    assert [p.name for p in real.parent.iterdir()] == ["qemu.conf"]  # no temporary left behind


def test_set_conf_key_keeps_comments_and_order(env, fake_root):
    fake_root.write("/etc/libvirt/qemu.conf", '# The user\n#user = "root"\n\nvnc_listen = "0.0.0.0"  # keep\n')
    act = SetConfKey("/etc/libvirt/qemu.conf", "user", "libvirt-qemu")
    assert act.command() == 'set user = "libvirt-qemu" in /etc/libvirt/qemu.conf'
    assert '+user = "libvirt-qemu"' in act.preview(env)
    act.apply(env)
    assert fake_root.read("/etc/libvirt/qemu.conf") == (
        '# The user\n#user = "root"\nuser = "libvirt-qemu"\n\nvnc_listen = "0.0.0.0"  # keep\n')


def test_mode_group_dir_actions(env, fake_root):
    node = fake_root.write("/dev/kvm", "", mode=0o600)
    SetMode("/dev/kvm", 0o660).apply(env)
    SetGroup("/dev/kvm", "kvm").apply(env)
    assert (node.stat().st_mode & 0o7777, node.stat().st_gid) == (0o660, 107)
    with pytest.raises(ActionError, match="group nogroup does not exist"):
        SetGroup("/dev/kvm", "nogroup").apply(env)
    MakeDir("/var/log/libvirt/qemu", 0o700).apply(env)
    assert oct(fake_root.path("/var/log/libvirt/qemu").stat().st_mode & 0o777) == oct(0o700)
    assert [SetMode("/dev/kvm", 0o660).command(), SetGroup("/dev/kvm", "kvm").command(),
            MakeDir("/var/log/libvirt", 0o700).command(), RemoveAcl("/dev/kvm").command()] == [
        "chmod 0660 /dev/kvm", "chgrp kvm /dev/kvm", "mkdir -p -m 0700 /var/log/libvirt", "setfacl -b /dev/kvm"]


def test_remove_acl(env, fake_root):
    node = fake_root.write("/dev/kvm", "", mode=0o660)
    if not has_acl_support(node):
        pytest.skip("no POSIX ACLs on this filesystem")
    subprocess.run(["setfacl", "-m", "u:64055:-", str(node)], check=True)
    RemoveAcl("/dev/kvm").apply(env)
    with pytest.raises(OSError):
        os.getxattr(node, ACL_XATTR)
    RemoveAcl("/dev/kvm").apply(env)  # no ACL: nothing to do, no error


def test_run_command_needs_the_live_host_or_a_runner(env):
    with pytest.raises(ActionError, match="not running libvirtd on the live host for --root"):
        RunCommand(["libvirtd", "-d"]).apply(env)
    ran = []
    env.run = lambda argv: ran.append(argv)
    RunCommand(["libvirtd", "-d"], "start libvirtd").apply(env)
    assert ran == [["libvirtd", "-d"]]
    with pytest.raises(ActionError, match=r"/run/libvirt/libvirt-sock did not appear within 0.2 s after libvirtd -d"):
        RunCommand(["libvirtd", "-d"], wait_for="/run/libvirt/libvirt-sock", wait_seconds=0.2).apply(env)
    act = RunCommand(["rm", "-f", "/x y"], "remove it")
    assert (act.command(), act.describe()) == ("rm -f '/x y'", "remove it")


def test_live_commands_report_failures():
    live = Env(root="/")
    assert live.command(["true"]).returncode == 0
    with pytest.raises(ActionError, match=r"sh -c 'echo nope >&2; exit 4' failed \(4\): nope"):
        live.command(["sh", "-c", "echo nope >&2; exit 4"])
    with pytest.raises(ActionError, match="vd-no-such-binary: not installed"):
        live.command(["vd-no-such-binary"])
    with pytest.raises(ActionError, match="did not finish within 0.2 s"):
        live.command(["sleep", "5"], timeout=0.2)


def test_plan_data():
    p = plan("Fix it", "safe", MakeDir("/a"), SetMode("/b", 0o644), notes=("restart later",))
    assert p.auto is Auto.SAFE and p.commands == ["mkdir -p -m 0700 /a", "chmod 0644 /b"]
    assert p.notes == ("restart later",)
    with pytest.raises(ValueError):
        plan("x", "sometimes")


# -- apply_plan: backup, re-check, rollback ---------------------------------------

def test_fixed_plan_keeps_a_backup_and_manifest(env, fake_root, backups):
    real = fake_root.write("/etc/libvirt/qemu.conf", 'user = "nobody"\n', mode=0o600)
    fake_root.mkdir("/var/log")
    p = plan("use libvirt-qemu", Auto.SAFE, SetConfKey("/etc/libvirt/qemu.conf", "user", "libvirt-qemu"),
             MakeDir("/var/log/libvirt", 0o700))
    out = apply_plan(p, env, "qemu-user-missing", "host", PASSES, backups)
    assert (out.status, out.applied, out.verified) == ("fixed", True, True)
    assert real.read_text() == 'user = "libvirt-qemu"\n'
    assert os.path.dirname(out.backup) == backups and "qemu-user-missing" in os.path.basename(out.backup)
    assert oct(os.stat(out.backup).st_mode & 0o777) == oct(0o700)
    copy = Path(out.backup, "files", "etc/libvirt/qemu.conf")
    assert copy.read_text() == 'user = "nobody"\n'
    manifest = json.loads(Path(out.backup, "manifest.json").read_text())
    assert manifest["slug"] == "qemu-user-missing" and manifest["subject"] == "host"
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["/etc/libvirt/qemu.conf"]["mode"] == 0o600
    assert by_path["/var/log/libvirt"]["absent"] is True
    d = out.to_dict()
    assert d["status"] == "fixed" and d["backup"] == out.backup
    assert set(d) >= {"id", "subject", "status", "applied", "verified", "backup", "commands", "summary", "detail"}


def test_failed_recheck_rolls_back_contents_modes_owners_acls(env, fake_root, backups):
    conf = fake_root.write("/etc/libvirt/qemu.conf", "# mine\nuser = \"alice\"\n", mode=0o640)
    os.chown(conf, 1000, 108)
    kvm = fake_root.write("/dev/kvm", "", mode=0o600)
    acl = has_acl_support(kvm)
    if acl:
        subprocess.run(["setfacl", "-m", "u:64055:-", str(kvm)], check=True)
    before = {p: state(p) for p in (conf, kvm)}
    p = plan("everything", Auto.SAFE,
             SetConfKey("/etc/libvirt/qemu.conf", "user", "libvirt-qemu"),
             RemoveAcl("/dev/kvm"), SetGroup("/dev/kvm", "kvm"), SetMode("/dev/kvm", 0o660),
             WriteFile("/etc/udev/rules.d/65-kvm.rules", "rule\n"),
             MakeDir("/var/log/libvirt/qemu", 0o700))
    out = apply_plan(p, env, "kvm-device-permission", "host", FAILS, backups)
    assert (out.status, out.applied, out.verified) == ("rolled-back", True, False)
    assert out.detail == "re-check still fails: still broken"
    assert {p: state(p) for p in (conf, kvm)} == before
    assert not fake_root.path("/etc/udev").exists(), "created files and their new parents are removed"
    assert not fake_root.path("/var/log").exists()
    assert os.path.isdir(out.backup)  # the backup stays for inspection


def test_action_error_mid_plan_rolls_back_what_was_done(env, fake_root, backups):
    kvm = fake_root.write("/dev/kvm", "", mode=0o600)
    before = state(kvm)
    p = plan("half", Auto.SAFE, SetMode("/dev/kvm", 0o666), SetGroup("/dev/kvm", "no-such-group"))
    out = apply_plan(p, env, "kvm-device-permission", "host", PASSES, backups)
    assert out.status == "rolled-back" and out.applied and not out.verified
    assert "group no-such-group does not exist" in out.detail
    assert state(kvm) == before


def test_first_action_failing_is_failed(env, fake_root, backups):
    p = plan("nothing done", Auto.SAFE, SetMode("/dev/absent", 0o660))
    out = apply_plan(p, env, "x", "host", PASSES, backups)
    assert (out.status, out.applied) == ("failed", False)
    assert "No such file or directory" in out.detail


class Explodes(Action):
    touches = ("/etc/exploded",)

    def command(self):
        return "explode"

    def apply(self, env):
        with open(env.path("/etc/exploded"), "w") as fh:
            fh.write("half-written")
        raise ValueError("unexpected bug in an action")


def test_unexpected_exception_in_an_action_still_rolls_back(env, fake_root, backups):
    fake_root.mkdir("/etc")
    kvm = fake_root.write("/dev/kvm", "", mode=0o600)
    p = plan("boom", Auto.SAFE, SetMode("/dev/kvm", 0o666), Explodes())
    out = apply_plan(p, env, "x", "host", PASSES, backups)
    assert out.status == "rolled-back" and "unexpected bug in an action" in out.detail
    assert kvm.stat().st_mode & 0o777 == 0o600
    assert not fake_root.path("/etc/exploded").exists()


def test_recheck_that_raises_rolls_back(env, fake_root, backups):
    kvm = fake_root.write("/dev/kvm", "", mode=0o600)

    def recheck():
        from virtdoctor.model import FactUnavailable

        raise FactUnavailable("the daemon did not answer")

    out = apply_plan(plan("x", Auto.SAFE, SetMode("/dev/kvm", 0o666)), env, "x", "host", recheck, backups)
    assert (out.status, out.applied, out.verified) == ("rolled-back", True, False)
    assert "the daemon did not answer" in out.detail
    assert kvm.stat().st_mode & 0o777 == 0o600


def test_run_command_undo_on_rollback(env, backups):
    ran = []
    env.run = lambda argv: ran.append(argv)
    p = plan("start", Auto.SAFE, RunCommand(["svc", "start"], undo=["svc", "stop"]))
    out = apply_plan(p, env, "x", "host", FAILS, backups)
    assert out.status == "rolled-back" and ran == [["svc", "start"], ["svc", "stop"]]


def test_backup_dirs_are_unique(tmp_path):
    a = remedy.new_backup_dir(str(tmp_path), "slug")
    b = remedy.new_backup_dir(str(tmp_path), "slug")
    assert a != b and os.path.isdir(a) and os.path.isdir(b)


# -- domains through libvirt (the test driver) ------------------------------------------

libvirt = pytest.importorskip("libvirt")


def test_define_domain_and_its_rollback(tmp_path, backups):
    conn = libvirt.open("test:///default")
    env = Env(root=str(tmp_path), libvirt_open=lambda: conn)
    old = conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    new = old.replace("<on_crash>", "<description>edited by virtdoctor</description>\n  <on_crash>", 1)
    assert new != old
    act = remedy.DefineDomain("test", new, old)
    assert "+  <description>edited by virtdoctor</description>" in act.preview(env)
    out = apply_plan(plan("edit", Auto.UNSAFE, act), env, "x", "domain:test", FAILS, backups)
    assert out.status == "rolled-back"
    assert "edited by virtdoctor" not in conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert Path(out.backup, "domains", "test.xml").read_text().count("<name>test</name>") == 1
    out = apply_plan(plan("edit", Auto.UNSAFE, remedy.DefineDomain("test", new, old)), env, "x", "domain:test",
                     PASSES, backups)
    assert out.status == "fixed"
    assert "edited by virtdoctor" in conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    bad = remedy.DefineDomain("test", "<domain type='test'><name>test</name><bogus/></domain>", old)
    out = apply_plan(plan("bad", Auto.UNSAFE, bad), env, "x", "domain:test", PASSES, backups)
    assert out.status == "failed" and "libvirt refused the new XML" in out.detail


def test_start_network(tmp_path):
    conn = libvirt.open("test:///default")
    net = conn.networkLookupByName("default")
    net.destroy()
    net.setAutostart(0)
    env = Env(root=str(tmp_path), libvirt_open=lambda: conn)
    act = remedy.StartNetwork("default", autostart=True)
    assert act.command() == "virsh net-start default && virsh net-autostart default"
    act.apply(env)
    assert net.isActive() and net.autostart()


# -- the lock -----------------------------------------------------------------------

LOCKER = textwrap.dedent("""
    import sys, time
    from virtdoctor.remedy import FixLock
    lock_path, log_path, name = sys.argv[1:4]
    with FixLock(lock_path, wait=30):
        for step in ("begin", "middle", "end"):
            with open(log_path, "a") as fh:
                fh.write(f"{name} {step}\\n")
            time.sleep(0.15)
""")


def test_two_fix_runs_never_interleave(tmp_path):
    lock, log = tmp_path / "run" / "virtdoctor-fix.lock", tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(lock), str(log), n]) for n in ("A", "B", "C")]
    for p in procs:
        assert p.wait(timeout=60) == 0
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 9
    blocks = [lines[i:i + 3] for i in (0, 3, 6)]
    for block in blocks:
        who = block[0].split()[0]
        assert block == [f"{who} begin", f"{who} middle", f"{who} end"], lines
    assert sorted(b[0].split()[0] for b in blocks) == ["A", "B", "C"]


def test_lock_gives_up_with_a_tool_error(tmp_path):
    path = str(tmp_path / "lock")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from virtdoctor.remedy import FixLock
        with FixLock({path!r}):
            print("held", flush=True)
            time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(ToolError, match="another virtdoctor fix holds"):
            FixLock(path, wait=0.3).__enter__()
        assert time.monotonic() - t0 < 3
    finally:
        holder.kill()
        holder.wait()
    with FixLock(path, wait=1):  # free again once the holder is gone
        assert Path(path).read_text().strip() == str(os.getpid())
