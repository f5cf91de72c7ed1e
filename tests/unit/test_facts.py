"""Host facts: rooted files, stat with POSIX ACLs judged as the kernel would (checked
against the real kernel), accounts, processes from a fake /proc, links from a fake sysfs,
URI resolution, commands with a timeout, the KVM probe."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from virtdoctor.facts import HostFacts
from virtdoctor.facts.accounts import Accounts, parse_account_spec
from virtdoctor.facts.files import (GROUP, MASK, OTHER, USER, USER_OBJ, AclEntry, encode_acl_xattr,
                                    parse_acl_xattr, read_acl)
from virtdoctor.facts.kvm import KvmProbe, probe_kvm
from virtdoctor.facts.procs import Proc
from virtdoctor.facts.uri import parse_uri, resolve_uri
from virtdoctor.model import FactUnavailable

PASSWD = [("root", 0, 0, "/root", "/bin/bash"), ("libvirt-qemu", 64055, 107), ("alice", 1000, 1000),
          ("bob", 1001, 1001), ("carol", 1002, 1002)]
GROUPS = [("root", 0), ("kvm", 107, ["libvirt-qemu", "alice"]), ("libvirt", 108, "alice"),
          ("alice", 1000), ("bob", 1001), ("carol", 1002), ("qemu", 2000)]


@pytest.fixture
def host(fake_root):
    fake_root.passwd(PASSWD)
    fake_root.group(GROUPS)
    return fake_root


def facts_for(root, **kw):
    return HostFacts(root=str(root), uri="qemu:///system", stat_overlay=getattr(root, "stat_table", None), **kw)


# -- files ---------------------------------------------------------------------

def test_paths_are_rooted(host):
    host.write("/etc/libvirt/qemu.conf", 'user = "alice"\n')
    host.write("/etc/libvirt/hooks/a.rules", "x")
    host.write("/etc/libvirt/hooks/b.rules", "y")
    f = facts_for(host)
    assert f.path("/etc/libvirt/qemu.conf") == str(host.path("/etc/libvirt/qemu.conf"))
    with pytest.raises(ValueError):
        f.path("etc/passwd")
    assert f.exists("/etc/libvirt/qemu.conf") and not f.exists("/etc/nope")
    assert f.is_dir("/etc/libvirt") and not f.is_dir("/etc/libvirt/qemu.conf")
    assert f.listdir("/etc/libvirt") == ["hooks", "qemu.conf"]
    assert f.listdir("/nope") == [] and f.listdir("/etc/libvirt/qemu.conf") == []
    assert f.glob("/etc/libvirt/hooks/*.rules") == ["/etc/libvirt/hooks/a.rules", "/etc/libvirt/hooks/b.rules"]
    assert f.read_text("/etc/libvirt/qemu.conf") == 'user = "alice"\n'
    assert f.read_text("/etc/missing") is None
    assert f.read_text("/etc/libvirt/qemu.conf/below-a-file") is None
    assert HostFacts(root="/").path("/etc/passwd") == "/etc/passwd"
    assert f.host_path(str(host.path("/etc/x"))) == "/etc/x"
    assert f.host_path(str(host.base)) == "/"
    assert not f.is_live and HostFacts(root="/").is_live


def test_dot_dot_stays_in_the_root(host, tmp_path):
    (tmp_path / "outside").write_text("not the host's")
    host.write("/etc/inside", "inside")
    f = facts_for(host)
    assert f.path("/../outside") == str(host.path("/outside"))
    assert f.read_text("/../outside") is None and f.read_text("/../../etc/../etc/inside") == "inside"
    assert f.path("/etc/libvirt/../passwd") == str(host.path("/etc/passwd"))


def test_read_bytes_replaces_bad_utf8_and_limits(host):
    host.write("/etc/bin", b"ok\xffok")
    f = facts_for(host)
    assert f.read_text("/etc/bin") == "ok\ufffdok"
    assert f.read_bytes("/etc/bin", limit=2) == b"ok"


def test_directory_is_unreadable_as_a_file(host):
    host.mkdir("/etc/libvirt")
    with pytest.raises(FactUnavailable, match="/etc/libvirt is a directory"):
        facts_for(host).read_text("/etc/libvirt")


def test_realpath_stays_in_the_root(host):
    host.write("/usr/share/OVMF/OVMF_CODE.fd", "fw")
    host.symlink("/usr/share/qemu/OVMF.fd", "/usr/share/OVMF/OVMF_CODE.fd")  # absolute: inside root
    host.symlink("/usr/share/qemu/rel.fd", "../OVMF/OVMF_CODE.fd")
    host.symlink("/loop/a", "/loop/b")
    host.symlink("/loop/b", "/loop/a")
    f = facts_for(host)
    assert f.realpath("/usr/share/qemu/OVMF.fd") == "/usr/share/OVMF/OVMF_CODE.fd"
    assert f.realpath("/usr/share/qemu/rel.fd") == "/usr/share/OVMF/OVMF_CODE.fd"
    assert f.read_text(f.realpath("/usr/share/qemu/OVMF.fd")) == "fw"
    with pytest.raises(FactUnavailable, match="too many levels"):
        f.realpath("/loop/a")


def test_absolute_symlinks_resolve_below_the_root(host):
    """A mounted image's absolute link means the image's file, never this machine's."""
    host.write("/etc/libvirt/qemu/networks/default.xml", "<network><name>default</name></network>")
    host.symlink("/etc/libvirt/qemu/networks/autostart/default.xml", "/etc/libvirt/qemu/networks/default.xml")
    host.symlink("/etc/hostname-link", "/etc/hostname")  # exists on this machine, not in the image
    host.symlink("/etc/alt", "/etc/libvirt")  # a linked directory
    host.write("/usr/share/OVMF/OVMF_CODE.fd", "fw", mode=0o600)
    host.symlink("/usr/share/qemu/OVMF.fd", "/usr/share/OVMF/OVMF_CODE.fd")
    f = facts_for(host)
    assert f.read_text("/etc/libvirt/qemu/networks/autostart/default.xml") == "<network><name>default</name></network>"
    assert f.read_text("/etc/hostname-link") is None
    assert f.stat("/etc/hostname-link") is None and f.exists("/etc/hostname-link")
    assert f.stat("/etc/hostname-link", follow=False).is_symlink
    assert f.stat("/usr/share/qemu/OVMF.fd").mode_text == "0600"
    assert f.is_dir("/etc/alt") and f.listdir("/etc/alt") == ["qemu"]
    assert f.read_text("/etc/alt/qemu/networks/default.xml").startswith("<network>")
    assert f.exists("/etc/alt/qemu/networks/autostart/default.xml")
    host.symlink("/usr/sbin/libvirtd", "/bin/true")  # an executable on this machine only
    assert f.which("libvirtd") is None


def test_which(host):
    host.write("/usr/sbin/libvirtd", "#!/bin/sh\n", mode=0o755)
    host.write("/usr/bin/notexec", "", mode=0o644)
    f = facts_for(host)
    assert f.which("libvirtd") == "/usr/sbin/libvirtd"
    assert f.which("notexec") is None and f.which("nope") is None
    assert f.which("/usr/sbin/libvirtd") == "/usr/sbin/libvirtd"


def test_stat_names_owner_and_group_from_the_roots_own_files(host):
    host.write("/dev/kvm-like", "", mode=0o660)
    host.chown("/dev/kvm-like", 0, 107)
    st = facts_for(host).stat("/dev/kvm-like")
    assert (st.mode_text, st.owner, st.group, st.uid, st.gid) == ("0660", "root", "kvm", 0, 107)
    assert st.is_file and not st.is_dir and not st.is_char_device and not st.is_socket
    host.chown("/dev/kvm-like", 4242, 4343)
    st = facts_for(host).stat("/dev/kvm-like")
    assert (st.owner, st.group) == ("4242", "4343")  # unknown ids stay numbers
    assert facts_for(host).stat("/dev/absent") is None


def test_stat_overlay_fakes_a_device_node_without_root(host):
    host.device("/dev/kvm", 10, 232, 0o660, 0, 107)
    st = facts_for(host).stat("/dev/kvm")
    assert st.is_char_device and (st.uid, st.gid, st.group, st.mode_text) == (0, 107, "kvm", "0660")
    assert (os.major(st.rdev), os.minor(st.rdev)) == (10, 232)
    os.chmod(host.path("/dev/kvm"), 0o600)  # what a fix's chmod does shows through the overlay
    assert facts_for(host).stat("/dev/kvm").mode_text == "0600"
    assert HostFacts(root=str(host)).stat("/dev/kvm").is_file  # without the overlay: the plain file


def test_stat_of_symlinks(host):
    host.write("/etc/target", "")
    host.symlink("/etc/link", "target")
    host.symlink("/etc/dangling", "nowhere")
    f = facts_for(host)
    assert f.stat("/etc/link").is_file
    assert f.stat("/etc/link", follow=False).is_symlink
    assert f.stat("/etc/dangling") is None and f.exists("/etc/dangling")


def test_stat_of_a_real_char_device_and_socket(tmp_path):
    f = HostFacts(root="/")
    assert f.stat("/dev/null").is_char_device
    import socket
    path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    try:
        assert f.stat(str(path)).is_socket
    finally:
        s.close()


# -- ACLs: parsing, and the access decision against the kernel's -------------------

def test_acl_xattr_round_trip_and_errors():
    entries = (AclEntry(USER_OBJ, 6, None), AclEntry(USER, 4, 1000), AclEntry(4, 0, None),
               AclEntry(GROUP, 6, 107), AclEntry(MASK, 6, None), AclEntry(OTHER, 0, None))
    assert parse_acl_xattr(encode_acl_xattr(entries)) == entries
    for bad in (b"", b"\x01\x00\x00\x00", b"\x02\x00\x00\x00\x01"):
        with pytest.raises(ValueError):
            parse_acl_xattr(bad)
    assert AclEntry(USER, 5, 1000).text() == "user:1000:r-x"
    assert AclEntry(USER, 5, 1000).text({(USER, 1000): "alice"}) == "user:alice:r-x"


def _setfacl(path, spec):
    subprocess.run(["setfacl", "-m", spec, str(path)], check=True, capture_output=True)


@pytest.fixture
def acl_dir(request):
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is not installed")
    # the child processes that ask the kernel must reach it: not below pytest's 0700 tmp dir
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="vd-acl-"))
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    os.chmod(d, 0o755)
    probe = d / "probe"
    probe.write_text("")
    try:
        _setfacl(probe, "u:1000:r")
    except subprocess.CalledProcessError:
        pytest.skip("the filesystem of the temporary directory has no POSIX ACLs")
    probe.unlink()
    return d


def kernel_allows(path, uid, gids, want) -> bool:
    """Ask the kernel itself: a child with these ids opens the file (or searches the dir)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups(sorted(gids))
            os.setgid(sorted(gids)[0] if gids else 65534)
            os.setuid(uid)
            if want == "x":
                os.listdir(path) if False else os.stat(os.path.join(path, "."))
                code = 0 if os.access(path, os.X_OK) else 1
            else:
                flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[want]
                os.close(os.open(path, flags))
                code = 0
        except PermissionError:
            code = 1
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"probe child failed ({code})"
    return code == 0


ACL_CASES = [
    # (mode, owner uid, group gid, [setfacl specs], uid, gids, want)
    pytest.param(0o600, 0, 107, [], 64055, {107}, "rw", id="0600-root-other-denied"),
    pytest.param(0o660, 0, 107, [], 64055, {107}, "rw", id="group-kvm-0660"),
    pytest.param(0o640, 0, 107, [], 64055, {107}, "rw", id="group-read-only"),
    pytest.param(0o606, 0, 107, [], 64055, {107}, "rw", id="group-entry-matched-blocks-other"),
    pytest.param(0o066, 64055, 107, [], 64055, {107}, "rw", id="owner-bits-win-over-group"),
    pytest.param(0o600, 0, 0, ["u:64055:rw"], 64055, {107}, "rw", id="named-user-acl-grants"),
    pytest.param(0o600, 0, 0, ["u:64055:rw", "m::r"], 64055, {107}, "rw", id="mask-limits-named-user"),
    pytest.param(0o666, 0, 0, ["u:64055:-"], 64055, {107}, "r", id="stray-acl-denies-qemu"),
    pytest.param(0o600, 0, 0, ["g:107:rw"], 64055, {107}, "rw", id="named-group-acl-grants"),
    pytest.param(0o600, 0, 0, ["g:107:r", "g:108:w"], 64055, {107, 108}, "rw",
                 id="two-groups-never-combine"),
    pytest.param(0o600, 0, 0, ["g:107:r", "g:108:rw"], 64055, {107, 108}, "rw", id="one-group-holds-all"),
    pytest.param(0o640, 0, 107, ["g:108:rw"], 64055, {107}, "w", id="owning-group-masked"),
    pytest.param(0o604, 0, 0, ["g:108:-"], 64055, {108}, "r", id="named-group-matched-blocks-other"),
    pytest.param(0o604, 0, 0, ["g:108:-"], 64055, {109}, "r", id="unmatched-group-falls-to-other"),
    pytest.param(0o606, 0, 0, ["u:64055:-", "m::-"], 64055, {107}, "rw", id="empty-mask-ignores-named-user"),
    pytest.param(0o660, 0, 107, ["g:107:-"], 64055, {107}, "rw", id="named-entry-for-the-owning-group"),
    pytest.param(0o600, 0, 107, ["u:64055:rw", "m::-"], 64055, {107}, "r", id="empty-mask-named-user-denied"),
    pytest.param(0o600, 0, 0, ["u:1000:rw"], 64055, {107}, "r", id="acl-for-someone-else"),
]


# What the kernel (Debian 12, Linux 6.1) answered for each case, asked as root by
# kernel_allows. Run as root, the test asks the kernel again and fails if it disagrees with
# this table; run unprivileged (no setuid, no chown), ownership comes from the stat overlay
# and the table stands for the kernel.
KERNEL_SAYS = {
    "0600-root-other-denied": False, "group-kvm-0660": True, "group-read-only": False,
    "group-entry-matched-blocks-other": False, "owner-bits-win-over-group": False,
    "named-user-acl-grants": True, "mask-limits-named-user": False, "stray-acl-denies-qemu": False,
    "named-group-acl-grants": True, "two-groups-never-combine": False, "one-group-holds-all": True,
    "owning-group-masked": False, "named-group-matched-blocks-other": True,
    "unmatched-group-falls-to-other": True, "empty-mask-ignores-named-user": True,
    "named-entry-for-the-owning-group": True, "empty-mask-named-user-denied": False,
    "acl-for-someone-else": False,
    "dir-x-group-member": True, "dir-x-stranger": False,
}


def _own(path, owner, group) -> dict:
    """chown as root; else the stat overlay says who owns it. Returns the overlay."""
    if os.geteuid() == 0:
        os.chown(path, owner, group)
        return {}
    return {str(path): {"uid": owner, "gid": group}}


def _kernel(case: str, path, uid, gids, want) -> bool:
    if os.geteuid() != 0:
        return KERNEL_SAYS[case]
    answer = kernel_allows(str(path), uid, gids, want)
    assert answer == KERNEL_SAYS[case], f"the kernel now says {answer} for {case}: update KERNEL_SAYS"
    return answer


@pytest.mark.parametrize("mode, owner, group, specs, uid, gids, want", ACL_CASES)
def test_access_decision_matches_the_kernel(request, acl_dir, mode, owner, group, specs, uid, gids, want):
    path = acl_dir / "node"
    path.write_text("")
    overlay = _own(path, owner, group)
    os.chmod(path, mode)
    for spec in specs:
        _setfacl(path, spec)
    st = HostFacts(root="/", stat_overlay=overlay).stat(str(path))
    assert bool(st.extended_acl) == bool(specs)
    assert st.allowed(uid, frozenset(gids), want) == _kernel(request.node.callspec.id, path, uid, gids, want)


def test_acl_text_and_read_acl(acl_dir):
    path = acl_dir / "node"
    path.write_text("")
    os.chmod(path, 0o600)
    assert read_acl(str(path)) == ()
    assert HostFacts(root="/").stat(str(path)).acl_text == ""
    _setfacl(path, "u:1000:rw")
    st = HostFacts(root="/").stat(str(path))
    assert st.acl_text == "user::rw-,user:1000:rw-,group::---,mask::rw-,other::---"
    assert st.mode_text == "0660"  # with an ACL the group bits show the mask


def test_directory_search_permission(acl_dir):
    d = acl_dir / "dir"
    d.mkdir()
    os.chmod(d, 0o750)
    st = HostFacts(root="/", stat_overlay=_own(d, 0, 107)).stat(str(d))
    for case, uid, gids in (("dir-x-group-member", 64055, {107}), ("dir-x-stranger", 1001, {1001})):
        assert st.allowed(uid, frozenset(gids), "x") == _kernel(case, d, uid, gids, "x")


def test_root_and_unknown_user(acl_dir):
    f = acl_dir / "f"
    f.write_text("")
    os.chmod(f, 0o600)
    st = HostFacts(root="/").stat(str(f))
    assert st.allowed(0, frozenset({0}), "rw")
    assert not st.allowed(0, frozenset({0}), "x")  # root needs some x bit to execute a file
    os.chmod(f, 0o100)
    assert HostFacts(root="/").stat(str(f)).allowed(0, frozenset(), "rx")
    assert not st.allowed(None, frozenset({107}), "r")


# -- accounts ---------------------------------------------------------------------

def test_accounts_parse_passwd_and_group():
    acc = Accounts.load("root:x:0:0:root:/root:/bin/bash\n# comment\nbroken line\nbad:x:NaN:0::/:/bin/sh\n"
                        "libvirt-qemu:x:64055:107:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n",
                        "root:x:0:\nkvm:x:107:libvirt-qemu\nlibvirt:x:108:alice,libvirt-qemu\nbad:x:zz:\n")
    assert sorted(acc.users) == ["libvirt-qemu", "root"]
    q = acc.user("libvirt-qemu")
    assert (q.uid, q.gid, q.home, q.shell) == (64055, 107, "/var/lib/libvirt", "/usr/sbin/nologin")
    assert q.groups == frozenset({107, 108})
    assert acc.user(64055) is q and acc.user(5) is None and acc.user("nobody") is None
    assert acc.group("libvirt").members == ("alice", "libvirt-qemu")
    assert acc.group(107).name == "kvm" and acc.group("bad") is None
    assert acc.user_name(0) == "root" and acc.user_name(99) == "99" and acc.group_name(99) == "99"


def test_account_spec_numeric_ids():
    acc = Accounts.load("alice:x:1000:1000::/:/bin/sh\n", "alice:x:1000:\n")
    assert parse_account_spec(acc, "alice", kind="user").uid == 1000
    assert parse_account_spec(acc, "+1000", kind="user").name == "alice"
    ghost = parse_account_spec(acc, "+4242", kind="user")
    assert (ghost.uid, ghost.name) == (4242, "+4242")
    assert parse_account_spec(acc, "nobody", kind="user") is None
    assert parse_account_spec(acc, "+77", kind="group") == 77
    assert parse_account_spec(acc, "alice", kind="group") == 1000
    assert parse_account_spec(acc, "nogroup", kind="group") is None


def test_accounts_of_an_empty_root(fake_root):
    f = facts_for(fake_root)
    assert f.accounts.users == {} and f.account("root") is None and f.group(0) is None


@pytest.mark.parametrize("conf, expected", [
    pytest.param('user = "alice"\ngroup = "kvm"\n', ("alice", "kvm", "qemu.conf", 1000, {107, 108, 1000}),
                 id="from-qemu-conf"),
    pytest.param('#user = "libvirt-qemu"\n#group = "libvirt-qemu"\n',
                 ("libvirt-qemu", "libvirt-qemu", "built-in default", 64055, {107}), id="debian-commented-default"),
    pytest.param('#       user = "qemu"\n', ("libvirt-qemu", "libvirt-qemu", "built-in default", 64055, {107}),
                 id="doc-example-is-not-the-default"),
    pytest.param(None, ("libvirt-qemu", "libvirt-qemu", "built-in default", 64055, {107}), id="no-qemu-conf"),
    pytest.param('user = "+1001"\ngroup = "+2000"\n', ("+1001", "+2000", "qemu.conf", 1001, {1001, 2000}),
                 id="numeric-ids"),
    pytest.param('user = "ghost"\n', ("ghost", "ghost", "qemu.conf", None, set()), id="missing-user"),
])
def test_qemu_account(host, conf, expected):
    if conf is not None:
        host.write("/etc/libvirt/qemu.conf", conf)
    q = facts_for(host).qemu_account()
    assert (q.user, q.group, q.source, q.uid, set(q.gids)) == expected
    assert q.label == f"{q.user}:{q.group}"
    assert (q.account is None) == (expected[3] is None)


def test_qemu_account_dynamic_ownership_and_guess(fake_root):
    fake_root.passwd([("qemu", 107, 107)])
    fake_root.group([("qemu", 107)])
    fake_root.write("/etc/libvirt/qemu.conf", "dynamic_ownership = 0\n")
    q = facts_for(fake_root).qemu_account()
    assert (q.user, q.uid, q.dynamic_ownership) == ("qemu", 107, False)


def test_conf_is_parsed_once_and_errors_repeat(host):
    from virtdoctor.confparse import ConfError

    host.write("/etc/libvirt/libvirtd.conf", 'log_outputs = "1:file:/var/log/libvirt/libvirtd.log"\n')
    host.write("/etc/libvirt/qemu.conf", 'user = \n')
    f = facts_for(host)
    c = f.conf("/etc/libvirt/libvirtd.conf")
    assert f.conf("/etc/libvirt/libvirtd.conf") is c
    assert f.conf_value("/etc/libvirt/libvirtd.conf", "log_outputs") == "1:file:/var/log/libvirt/libvirtd.log"
    assert f.conf_value("/etc/libvirt/libvirtd.conf", "nope", 7) == 7
    assert f.conf("/etc/libvirt/absent.conf") is None
    for _ in range(2):
        with pytest.raises(ConfError, match="qemu.conf:1"):
            f.conf("/etc/libvirt/qemu.conf")
    assert f.conf_value("/etc/libvirt/qemu.conf", "user", "dflt") == "dflt"


# -- processes and links -------------------------------------------------------------

def test_processes_from_a_fake_proc(fake_root):
    fake_root.write("/proc/1/comm", "init\n")
    fake_root.write("/proc/1/cmdline", b"/sbin/init\0")
    fake_root.write("/proc/812/comm", "libvirtd\n")
    fake_root.write("/proc/812/cmdline", b"/usr/sbin/libvirtd\0-d\0--listen\0")
    fake_root.write("/proc/900/comm", "kworker/0:1\n")  # a kernel thread: empty cmdline
    fake_root.write("/proc/900/cmdline", b"")
    fake_root.mkdir("/proc/901")                        # vanished while listing: no comm
    fake_root.write("/proc/self/comm", "python\n")      # not a pid
    fake_root.write("/proc/cpuinfo", "")
    f = facts_for(fake_root)
    procs = sorted(f.processes, key=lambda p: p.pid)
    assert [(p.pid, p.name, p.cmdline) for p in procs] == [
        (1, "init", ("/sbin/init",)), (812, "libvirtd", ("/usr/sbin/libvirtd", "-d", "--listen")),
        (900, "kworker/0:1", ())]
    assert [p.pid for p in f.process_named("libvirtd")] == [812]
    assert f.process_named("virtqemud") == []


def test_processes_without_proc_and_override(fake_root):
    assert facts_for(fake_root).processes == []
    f = facts_for(fake_root, processes_override=[Proc(5, "virtqemud", ("virtqemud",))])
    assert [p.pid for p in f.process_named("virtqemud")] == [5]


def test_live_processes_include_this_one():
    procs = HostFacts(root="/").processes
    me = next(p for p in procs if p.pid == os.getpid())
    assert me.uid == os.getuid() and me.cmdline


def test_links_from_a_fake_sysfs(fake_root):
    net = "/sys/class/net"
    fake_root.mkdir(f"{net}/br0/bridge")
    fake_root.mkdir(f"{net}/br0/brif/bond0")
    fake_root.mkdir(f"{net}/br0/brif/vnet0")
    fake_root.write(f"{net}/br0/operstate", "up\n")
    fake_root.write(f"{net}/br0/uevent", "DEVTYPE=bridge\nINTERFACE=br0\n")
    fake_root.write(f"{net}/bond0/bonding/mode", "balance-alb 6\n")
    fake_root.write(f"{net}/bond0/bonding/slaves", "eth0 eth1\n")
    fake_root.write(f"{net}/bond0/uevent", "DEVTYPE=bond\n")
    fake_root.symlink(f"{net}/bond0/master", "../br0")
    fake_root.mkdir(f"{net}/eth0/device")
    fake_root.symlink(f"{net}/eth0/master", "../bond0")
    fake_root.write(f"{net}/eth0/operstate", "up\n")
    fake_root.mkdir(f"{net}/vnet0")
    fake_root.write(f"{net}/vnet0/uevent", "INTERFACE=vnet0\nDEVTYPE=tun\n")
    fake_root.mkdir(f"{net}/lo")
    fake_root.write(f"{net}/bonding_masters", "bond0\n")  # a file, not a link
    f = facts_for(fake_root)
    links = f.links
    assert sorted(links) == ["bond0", "br0", "eth0", "lo", "vnet0"]
    br, bond, eth, vnet, lo = (links[n] for n in ("br0", "bond0", "eth0", "vnet0", "lo"))
    assert (br.is_bridge, br.kind, br.ports, br.operstate, br.master) == (True, "bridge", ("bond0", "vnet0"), "up",
                                                                          None)
    assert (bond.is_bond, bond.kind, bond.ports, bond.bond_mode, bond.bond_mode_name, bond.master) == (
        True, "bond", ("eth0", "eth1"), "balance-alb 6", "balance-alb", "br0")
    assert (eth.kind, eth.master, eth.operstate, eth.bond_mode_name) == ("physical", "bond0", "up", None)
    assert vnet.kind == "tun" and lo.kind == "virtual" and lo.operstate == "unknown"
    assert f.links is links  # read once per run


def test_no_sysfs_no_links(fake_root):
    assert facts_for(fake_root).links == {}


# -- URI resolution -----------------------------------------------------------------

@pytest.mark.parametrize("explicit, env, euid, conf, expected", [
    pytest.param(None, {}, 0, None, "qemu:///system", id="root-system"),
    pytest.param(None, {}, 1000, None, "qemu:///session", id="user-session"),
    pytest.param(None, {"LIBVIRT_DEFAULT_URI": "test:///default"}, 0, None, "test:///default", id="env"),
    pytest.param("qemu+ssh://h/system", {"LIBVIRT_DEFAULT_URI": "test:///default"}, 0, None,
                 "qemu+ssh://h/system", id="explicit-wins"),
    pytest.param(None, {}, 0, 'uri_default = "qemu:///embed"\n', "qemu:///embed", id="uri-default"),
    pytest.param("hv1", {}, 0, 'uri_aliases = [ "hv1=qemu+ssh://root@hv1/system", "x=test:///default" ]\n',
                 "qemu+ssh://root@hv1/system", id="alias"),
    pytest.param(None, {"LIBVIRT_DEFAULT_URI": "x"}, 0, 'uri_aliases = [ "x=test:///default" ]\n',
                 "test:///default", id="alias-of-the-env-default"),
    pytest.param("hv2", {}, 0, 'uri_aliases = [ "hv1=qemu+ssh://root@hv1/system" ]\n', "hv2", id="no-such-alias"),
])
def test_resolve_uri(fake_root, explicit, env, euid, conf, expected):
    if conf:
        fake_root.write("/etc/libvirt/libvirt.conf", conf)
    assert resolve_uri(explicit, env=env, euid=euid, facts=facts_for(fake_root)) == expected


def test_user_aliases_come_from_xdg_config(fake_root, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "/home/alice/.config")
    fake_root.write("/home/alice/.config/libvirt/libvirt.conf", 'uri_aliases = [ "mine=test:///default" ]\n')
    fake_root.write("/etc/libvirt/libvirt.conf", 'uri_aliases = [ "mine=qemu:///system" ]\n')
    f = facts_for(fake_root)
    assert resolve_uri("mine", env={}, euid=1000, facts=f) == "test:///default"
    assert resolve_uri("mine", env={}, euid=0, facts=f) == "qemu:///system"


def test_user_uri_default_comes_from_xdg_config(fake_root, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "/home/alice/.config")
    fake_root.write("/home/alice/.config/libvirt/libvirt.conf", 'uri_default = "qemu:///system"\n')
    f = facts_for(fake_root)
    assert resolve_uri(None, env={}, euid=1000, facts=f) == "qemu:///system"
    assert resolve_uri(None, env={"LIBVIRT_DEFAULT_URI": "test:///default"}, euid=1000, facts=f) == "test:///default"


def test_resolved_uri_of_host_facts(fake_root, monkeypatch):
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert HostFacts(root=str(fake_root), uri="test:///default").resolved_uri == "test:///default"
    assert HostFacts(root=str(fake_root)).resolved_uri == ("qemu:///system" if os.geteuid() == 0
                                                          else "qemu:///session")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///embed?root=/tmp/x")
    assert HostFacts(root=str(fake_root)).resolved_uri == "qemu:///embed?root=/tmp/x"


@pytest.mark.parametrize("uri, driver, transport, host, path, remote, tls", [
    ("qemu:///system", "qemu", "", "", "/system", False, False),
    ("qemu://hv1/system", "qemu", "", "hv1", "/system", True, True),
    ("qemu+ssh://root@hv1:2222/system", "qemu", "ssh", "hv1", "/system", True, False),
    ("qemu+tls://hv1/system", "qemu", "tls", "hv1", "/system", True, True),
    ("qemu+unix:///system?socket=/tmp/s", "qemu", "unix", "", "/system", False, False),
    ("test:///default", "test", "", "", "/default", False, False),
])
def test_parse_uri(uri, driver, transport, host, path, remote, tls):
    p = parse_uri(uri)
    assert (p.driver, p.transport, p.host, p.path, p.is_remote, p.uses_tls) == (
        driver, transport, host, path, remote, tls)


# -- commands, KVM, libvirt gate --------------------------------------------------------

def test_run_on_the_live_host():
    f = HostFacts(root="/")
    cmd = f.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (cmd.returncode, cmd.stdout, cmd.stderr) == (3, "out\n", "err\n")
    assert f.run(["cat"], input="piped").stdout == "piped"
    with pytest.raises(FactUnavailable, match="vd-no-such-binary: not installed"):
        f.run(["vd-no-such-binary"])
    t0 = time.monotonic()
    with pytest.raises(FactUnavailable, match=r"sleep 30 did not finish within 0.3 s"):
        f.run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - t0 < 5


def test_run_refuses_a_foreign_root(fake_root):
    with pytest.raises(FactUnavailable, match="not running true for --root"):
        facts_for(fake_root).run(["true"])


def test_kvm_probe_injected_and_refused_for_a_foreign_root(fake_root):
    probe = KvmProbe("/dev/kvm", True, None, 12, True, False)
    assert probe.usable
    assert facts_for(fake_root, kvm=probe).kvm_probe() is probe
    with pytest.raises(FactUnavailable, match="cannot probe /dev/kvm of --root"):
        facts_for(fake_root).kvm_probe()


def test_probe_kvm_on_things_that_are_not_kvm(tmp_path):
    missing = probe_kvm(str(tmp_path / "kvm"))
    assert not missing.opened and not missing.usable and "No such file or directory" in missing.error
    plain = tmp_path / "plain"
    plain.write_text("")
    p = probe_kvm(str(plain))
    assert p.opened and not p.usable and p.error.startswith("KVM_GET_API_VERSION failed")
    assert not probe_kvm("/dev/null").usable


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="this machine has no /dev/kvm")
def test_probe_the_real_kvm():
    p = probe_kvm("/dev/kvm")
    if not p.opened:
        assert "Permission denied" in p.error
    else:
        assert p.api_version == 12 and p.vm_created and p.usable


def test_foreign_root_does_not_connect_to_this_machines_libvirt_unless_asked(fake_root):
    with pytest.raises(FactUnavailable, match="is not this machine: not connecting to its libvirt"):
        HostFacts(root=str(fake_root)).libvirt
    assert HostFacts(root=str(fake_root), uri="test:///default").libvirt.uri == "test:///default"


def test_libvirt_gate(fake_root):
    with pytest.raises(FactUnavailable, match="--offline"):
        HostFacts(root=str(fake_root), offline=True).libvirt
    from virtdoctor.facts.libvirt import RecordedLibvirt

    rec = RecordedLibvirt()
    assert HostFacts(root=str(fake_root), offline=True, libvirt_facts=rec).libvirt is rec


def test_read_text_of_a_procfs_file_reads_in_chunks():
    """procfs refuses one read of the 16 MiB default with ENOMEM; facts read in chunks."""
    from virtdoctor.facts import HostFacts

    text = HostFacts().read_text("/proc/sys/kernel/osrelease")
    assert text and text.strip() == os.uname().release


def test_fake_proc_tree_leaves_zombies_out(tmp_path):
    """An exited daemon not yet reaped is not running."""
    from virtdoctor.facts.procs import read_processes

    for pid, comm, state in ((10, "libvirtd", "Z"), (11, "virtlogd", "S")):
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(comm.encode() + b"\0-d\0")
        (d / "stat").write_text(f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1\n")
    assert [p.name for p in read_processes(str(tmp_path))] == ["virtlogd"]
