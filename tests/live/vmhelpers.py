"""Helpers for live tests on the real daemon: tiny guests, daemon and file guards, cleanup.

Everything a live test creates is named with PREFIX ("vdtest-"): domains, networks, storage
pools, bridges and veths, files under /var/lib/libvirt/images. `cleanup_leftovers` removes
what carries the prefix, so a crashed session cannot leave the host cluttered.

Import from live tests as `import vmhelpers` (tests/live/conftest.py puts this directory on
sys.path). Nothing here runs at import.
"""
from __future__ import annotations

import dataclasses
import fcntl
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from xml.sax.saxutils import escape

PREFIX = "vdtest-"
IMAGES_DIR = Path("/var/lib/libvirt/images")
NVRAM_DIR = Path("/var/lib/libvirt/qemu/nvram")
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
QEMU_RUN_DIR = Path("/run/libvirt/qemu")
EMULATOR = "/usr/bin/qemu-system-x86_64"
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


def live_uri() -> str:
    """The URI live tests use: VIRTDOCTOR_TEST_URI, else qemu:///system."""
    return os.environ.get("VIRTDOCTOR_TEST_URI") or "qemu:///system"


def check_name(name: str) -> str:
    if not name.startswith(PREFIX):
        raise ValueError(f"live-test objects are named {PREFIX}*, not {name!r}")
    return name


# --------------------------------------------------------------------------- libvirt and KVM

def open_with_timeout(uri: str | None = None, timeout: float = 10.0, readonly: bool = False):
    """libvirt.open(uri) that gives up after `timeout` seconds (a hung daemon must not hang the
    suite). Returns the connection; raises RuntimeError with the reason."""
    import libvirt

    uri = uri or live_uri()
    result: dict = {}

    def target():
        try:
            conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
            conn.getLibVersion()
            result["conn"] = conn
        except Exception as exc:  # libvirt.libvirtError and whatever the binding raises
            result["error"] = exc

    thread = threading.Thread(target=target, name="libvirt-open", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RuntimeError(f"{uri} did not answer within {timeout:g} s")
    if "error" in result:
        raise RuntimeError(f"cannot open {uri}: {str(result['error']).strip()}")
    return result["conn"]


def wait_for_uri(uri: str | None = None, timeout: float = 30.0):
    """Open `uri` read-write, retrying until it answers or `timeout` passes; the connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_with_timeout(uri, timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        except RuntimeError as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{exc} (waited {timeout:g} s)") from None
            time.sleep(0.2)


def version_text(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def qemu_account(qemu_conf: str = "/etc/libvirt/qemu.conf") -> tuple[str, int, list[int]]:
    """(user, gid, groups) QEMU runs as, as libvirt sets them: qemu.conf `user`/`group` (Debian's
    build defaults: libvirt-qemu/libvirt-qemu), plus the user's primary group and the groups
    that list the user. Raises KeyError when the account does not exist."""
    try:
        text = Path(qemu_conf).read_text()
    except OSError:
        text = ""
    settings = {}
    for key in ("user", "group"):
        m = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', text, re.M)
        settings[key] = (m.group(1) if m else "libvirt-qemu").lstrip("+")

    user = (pwd.getpwuid(int(settings["user"])) if settings["user"].isdigit()
            else pwd.getpwnam(settings["user"]))
    try:
        gid = (int(settings["group"]) if settings["group"].isdigit()
               else grp.getgrnam(settings["group"]).gr_gid)
    except KeyError:
        gid = user.pw_gid
    return user.pw_name, gid, sorted({gid, *os.getgrouplist(user.pw_name, user.pw_gid)})


def kvm_usable_by_qemu(device: str = "/dev/kvm") -> tuple[bool, str]:
    """Judge as QEMU would: a child with QEMU's uid, gid and groups opens `device` read-write
    and asks KVM_GET_API_VERSION. (usable, reason when not). Needs root to switch ids."""
    if not os.path.exists(device):
        return False, f"{device} is absent"
    try:
        user, gid, groups = qemu_account()
    except KeyError as exc:
        return False, f"QEMU's account does not exist: {exc}"
    uid = pwd.getpwnam(user).pw_uid
    pid = os.fork()
    if pid == 0:  # child: syscalls only, then _exit
        code = 4
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            code = 0 if fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION else 3
        except PermissionError:
            code = 2
        except BaseException:
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return True, ""
    if code == 2:
        return False, f"{user} (gid {gid}, groups {groups}) cannot open {device} read-write"
    if code == 3:
        return False, f"{device} answers an unexpected KVM API version"
    return False, f"probing {device} as {user} failed (status {code})"


# --------------------------------------------------------------------------- tiny guests

def build_vm_xml(name: str, *, virt_type: str, memory_mib: int = 96, machine: str = "pc",
                 disk: str | os.PathLike | None = None, firmware: str | None = None,
                 network: str | None = None, devices: str = "") -> str:
    """Domain XML for a tiny x86_64 guest: `memory_mib` 64-128, one vCPU, no graphics, serial
    console on a pty, no balloon. `virt_type` "kvm" or "qemu" (TCG); `machine` "pc" or "q35";
    `disk` a qcow2 path attached as virtio vda; `firmware` None (SeaBIOS) or "efi" (OVMF with
    secure boot off: this host has no SMM); `network` a libvirt network name for one virtio NIC;
    `devices` raw XML appended inside <devices>."""
    check_name(name)
    if virt_type not in ("kvm", "qemu"):
        raise ValueError(f"virt_type must be 'kvm' or 'qemu', not {virt_type!r}")
    if not 64 <= memory_mib <= 128:
        raise ValueError(f"a tiny guest has 64-128 MiB, not {memory_mib}")
    if machine not in ("pc", "q35"):
        raise ValueError(f"machine must be 'pc' or 'q35', not {machine!r}")
    if firmware not in (None, "bios", "efi"):
        raise ValueError(f"firmware must be None, 'bios' or 'efi', not {firmware!r}")

    if firmware == "efi":
        os_xml = ("  <os firmware='efi'>\n"
                  f"    <type arch='x86_64' machine='{machine}'>hvm</type>\n"
                  "    <firmware>\n"
                  "      <feature enabled='no' name='secure-boot'/>\n"
                  "      <feature enabled='no' name='enrolled-keys'/>\n"
                  "    </firmware>\n"
                  "  </os>\n")
    else:
        os_xml = ("  <os>\n"
                  f"    <type arch='x86_64' machine='{machine}'>hvm</type>\n"
                  "    <boot dev='hd'/>\n"
                  "  </os>\n")
    parts = []
    if disk is not None:
        parts.append("    <disk type='file' device='disk'>\n"
                     "      <driver name='qemu' type='qcow2'/>\n"
                     f"      <source file='{escape(os.fspath(disk))}'/>\n"
                     "      <target dev='vda' bus='virtio'/>\n"
                     "    </disk>\n")
    if network is not None:
        parts.append("    <interface type='network'>\n"
                     f"      <source network='{escape(network)}'/>\n"
                     "      <model type='virtio'/>\n"
                     "    </interface>\n")
    if devices:
        parts.append(devices.rstrip("\n") + "\n")
    return (f"<domain type='{virt_type}'>\n"
            f"  <name>{escape(name)}</name>\n"
            f"  <memory unit='MiB'>{memory_mib}</memory>\n"
            "  <vcpu>1</vcpu>\n"
            f"{os_xml}"
            "  <features><acpi/></features>\n"
            "  <on_poweroff>destroy</on_poweroff>\n"
            "  <on_reboot>restart</on_reboot>\n"
            "  <on_crash>destroy</on_crash>\n"
            "  <devices>\n"
            f"    <emulator>{EMULATOR}</emulator>\n"
            f"{''.join(parts)}"
            "    <serial type='pty'><target port='0'/></serial>\n"
            "    <console type='pty'><target type='serial' port='0'/></console>\n"
            "    <memballoon model='none'/>\n"
            "  </devices>\n"
            "</domain>\n")


def create_disk(name: str, size_mib: int = 16) -> Path:
    """An empty qcow2 image /var/lib/libvirt/images/NAME.qcow2 (replaced if present)."""
    path = IMAGES_DIR / f"{check_name(name)}.qcow2"
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"],
                   check=True, capture_output=True, text=True, timeout=30)
    return path


def undefine_domain(conn, name: str) -> bool:
    """Destroy (if running) and undefine `name` with its NVRAM, managed save and snapshot
    metadata; a transient domain is only destroyed. False when no such domain exists."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # it stopped meanwhile
                raise
    if dom.isPersistent():
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                          | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                          | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    return True


@dataclasses.dataclass(frozen=True)
class Proof:
    """What start_and_prove saw: seconds from create() to the running state, the virt type,
    QEMU's pid and the guest CPU time it had used."""
    seconds: float
    virt_type: str
    pid: int
    cpu_time_ns: int


def start_and_prove(dom, timeout: float = 60.0, settle: float = 0.3) -> Proof:
    """Start `dom`, assert it reaches and keeps the running state with a live QEMU process whose
    guest CPU has run, then destroy it (always, even when an assertion fails)."""
    import libvirt

    name = dom.name()
    virt_type = re.search(r"<domain[^>]*type=['\"](\w+)", dom.XMLDesc(0)).group(1)
    t0 = time.monotonic()
    dom.create()
    try:
        deadline = t0 + timeout
        while dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            assert time.monotonic() < deadline, f"{name} not running after {timeout:g} s: state {dom.state()}"
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        pid = int((QEMU_RUN_DIR / f"{name}.pid").read_text().strip())
        time.sleep(settle)
        state, reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING, f"{name} left the running state: {(state, reason)}"
        os.kill(pid, 0)  # QEMU is alive (raises ProcessLookupError otherwise)
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        assert comm.startswith("qemu"), f"pid {pid} of {name} is {comm!r}, not QEMU"
        cpu_time = dom.info()[4]
        assert cpu_time > 0, f"{name}'s guest CPU has not run"
        return Proof(seconds, virt_type, pid, cpu_time)
    finally:
        if dom.isActive():
            dom.destroy()


# --------------------------------------------------------------------------- processes

def daemon_pids(name: str) -> set[int]:
    """Pids of live (not zombie) processes whose command name is exactly `name`."""
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        state = data[data.rindex(")") + 2:][:1]
        if comm == name[:15] and state not in ("Z", "X"):
            pids.add(int(entry.name))
    return pids


def _wait_gone(pids, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        alive.discard(pid)
            except OSError:
                alive.discard(pid)
        if alive:
            time.sleep(0.05)
    return alive


def stop_pids(pids, timeout: float = 15.0) -> None:
    """SIGTERM `pids`, wait, SIGKILL what remains."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    left = _wait_gone(pids, timeout)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if _wait_gone(left, 5.0):
        raise RuntimeError(f"processes {sorted(left)} do not exit")


class DaemonGuard:
    """Records which libvirt daemons run, by pid, and puts that back in `restore()`.

    `restore()` stops, by pid, daemons of a watched name that did not run at the start (a test
    started them: e.g. virtqemud beside libvirtd), then starts virtlogd and libvirtd again if
    they ran at the start and no longer do, and waits until the URI answers. Daemons that ran at
    the start are never stopped, and nothing else is touched.
    """

    STARTABLE = ("virtlogd", "libvirtd")   # in start order
    WATCHED = STARTABLE + ("virtqemud", "virtnetworkd", "virtstoraged", "virtnodedevd",
                           "virtsecretd", "virtnwfilterd", "virtinterfaced", "virtproxyd",
                           "virtlockd")

    def __init__(self, uri: str | None = None):
        self.uri = uri or live_uri()
        self.before = {name: daemon_pids(name) for name in self.WATCHED}

    def pids(self, name: str) -> set[int]:
        return daemon_pids(name)

    def stop(self, name: str, timeout: float = 15.0) -> set[int]:
        """Stop every `name` process by pid (SIGTERM, then SIGKILL); the pids stopped."""
        pids = daemon_pids(name)
        stop_pids(pids, timeout)
        return pids

    def restore(self, timeout: float = 30.0) -> list[str]:
        """Back to the recorded daemons; what it did, as lines."""
        done = []
        for name in self.WATCHED:
            if not self.before[name]:
                started = daemon_pids(name)
                if started:
                    stop_pids(started)
                    done.append(f"stopped {name} {sorted(started)} (started during the test)")
        for name in self.STARTABLE:
            if self.before[name] and not daemon_pids(name):
                Path("/var/log/libvirt").mkdir(parents=True, exist_ok=True)  # libvirtd needs it
                proc = subprocess.run([name, "-d"], capture_output=True, text=True, timeout=60)
                if proc.returncode != 0:
                    raise RuntimeError(f"'{name} -d' failed ({proc.returncode}): {proc.stderr.strip()}")
                done.append(f"started {name}")
        if self.before["libvirtd"] or self.before["virtqemud"]:
            wait_for_uri(self.uri, timeout).close()
        return done


# --------------------------------------------------------------------------- files

XATTR_PREFIXES = ("system.posix_acl_", "user.")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith(XATTR_PREFIXES):
            try:
                out[n] = os.getxattr(path, n, follow_symlinks=False)
            except OSError:
                pass
    return out


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"   # device node, fifo, socket


@dataclasses.dataclass
class _Node:
    kind: str
    mode: int
    uid: int
    gid: int
    xattrs: dict
    target: str = ""      # symlink
    rdev: int = 0         # device node
    copy: str = ""        # backup of a regular file's bytes
    children: tuple = ()  # directory entries, by relative path


class FileGuard:
    """A snapshot of a path (file, directory tree, symlink, device node, or its absence): type,
    bytes, mode, owner and ACL/user xattrs; `restore()` puts all of it back, removing what was
    added and rewriting only files whose bytes changed (their inode stays)."""

    def __init__(self, path: str | os.PathLike, backup_dir: str | os.PathLike | None = None,
                 max_bytes: int = 256 << 20):
        self.path = Path(path)
        self.backup_dir = Path(backup_dir or tempfile.mkdtemp(prefix="vdtest-backup-"))
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        self._budget = max_bytes
        self.nodes: dict[str, _Node] = {}
        if os.path.lexists(self.path):
            self._snap("")

    @property
    def existed(self) -> bool:
        return "" in self.nodes

    def _real(self, rel: str) -> str:
        return os.path.join(self.path, rel) if rel else os.fspath(self.path)

    def _snap(self, rel: str) -> None:
        real = self._real(rel)
        st = os.lstat(real)
        kind = _kind(st.st_mode)
        node = _Node(kind, st.st_mode, st.st_uid, st.st_gid,
                     {} if kind == "symlink" else _xattrs(real))
        self.nodes[rel] = node
        if kind == "symlink":
            node.target = os.readlink(real)
        elif kind == "other":
            node.rdev = st.st_rdev
        elif kind == "file":
            self._budget -= st.st_size
            if self._budget < 0:
                raise RuntimeError(f"file_guard: {self.path} is too large to back up")
            node.copy = os.path.join(self.backup_dir, str(len(self.nodes)))
            shutil.copyfile(real, node.copy, follow_symlinks=False)
        else:
            node.children = tuple(os.path.join(rel, n) for n in sorted(os.listdir(real)))
            for child in node.children:
                self._snap(child)

    def restore(self) -> None:
        if not self.existed:
            _remove(os.fspath(self.path))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # the test may have removed it
            self._restore("")

    def _restore(self, rel: str) -> None:
        node, real = self.nodes[rel], self._real(rel)
        try:
            cur = os.lstat(real)
        except FileNotFoundError:
            cur = None
        if cur is not None and (
                _kind(cur.st_mode) != node.kind
                or (node.kind == "symlink" and os.readlink(real) != node.target)
                or (node.kind == "other" and (stat.S_IFMT(cur.st_mode) != stat.S_IFMT(node.mode)
                                              or cur.st_rdev != node.rdev))):
            _remove(real)
            cur = None
        if node.kind == "dir":
            if cur is None:
                os.mkdir(real, 0o700)
            keep = {os.path.basename(c) for c in node.children}
            for name in os.listdir(real):
                if name not in keep:
                    _remove(os.path.join(real, name))
            for child in node.children:
                self._restore(child)
        elif node.kind == "file":
            if cur is None or not _same_bytes(real, node.copy):
                with open(node.copy, "rb") as src, open(real, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        elif node.kind == "symlink":
            if cur is None:
                os.symlink(node.target, real)
        elif cur is None:
            if stat.S_ISSOCK(node.mode):
                raise RuntimeError(f"file_guard cannot recreate the socket {real}")
            os.mknod(real, node.mode, node.rdev)
        os.lchown(real, node.uid, node.gid)
        if node.kind == "symlink":
            return
        for name in _xattrs(real):
            if name not in node.xattrs:
                os.removexattr(real, name, follow_symlinks=False)
        os.chmod(real, stat.S_IMODE(node.mode))
        for name, value in node.xattrs.items():
            os.setxattr(real, name, value, follow_symlinks=False)

    def cleanup(self) -> None:
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _same_bytes(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 16), fb.read(1 << 16)
            if x != y:
                return False
            if not x:
                return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# --------------------------------------------------------------------------- virtdoctor itself

def run_virtdoctor(*args: str, input: str | None = None, env: dict | None = None,
                   timeout: float = 120.0) -> tuple[int, str, str]:
    """Run `python -m virtdoctor ARGS` with this interpreter; (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "virtdoctor", *args], input=input,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


# --------------------------------------------------------------------------- leftovers

def cleanup_leftovers(conn) -> list[str]:
    """Remove every vdtest-* domain, network, storage pool, network link and image/NVRAM file;
    what was removed, as lines."""
    removed = []
    for dom in conn.listAllDomains():
        if dom.name().startswith(PREFIX) and undefine_domain(conn, dom.name()):
            removed.append(f"domain {dom.name()}")
    for net in conn.listAllNetworks():
        if net.name().startswith(PREFIX):
            if net.isActive():
                net.destroy()
            if net.isPersistent():
                net.undefine()
            removed.append(f"network {net.name()}")
    for pool in conn.listAllStoragePools():
        if pool.name().startswith(PREFIX):
            if pool.isActive():
                pool.destroy()
            if pool.isPersistent():
                pool.undefine()
            removed.append(f"pool {pool.name()}")
    for link in sorted(os.listdir("/sys/class/net")):
        if link.startswith(PREFIX) and os.path.lexists(f"/sys/class/net/{link}"):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
            removed.append(f"link {link}")
    for folder in (IMAGES_DIR, NVRAM_DIR):
        for path in sorted(folder.glob(PREFIX + "*")) if folder.is_dir() else ():
            _remove(os.fspath(path))
            removed.append(f"file {path}")
    return removed
