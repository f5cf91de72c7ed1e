"""A tiny real Linux guest for live tests, built from Debian packages.

The distribution kernel (the image package `linux-image-amd64` depends on; its ELF vmlinux,
through QEMU's PVH entry) is booted directly with <kernel>/<initrd>; the initramfs is a busybox-static userland whose /init mounts proc,
sys and devtmpfs, loads the virtio, pvpanic and balloon modules of that same kernel, prints
"tinyguest: up" on the serial console and then runs the test's shell snippet, e.g.:

    echo c > /proc/sysrq-trigger             # kernel panic (with <panic> and <on_crash>)
    start_agent                              # qemu-ga on the org.qemu.guest_agent.0 port
    dd if=/dev/zero of=/dev/vda bs=1M        # write to a disk until it fails

After the snippet the guest idles forever (`sleep`), so the domain stays running.

Nothing is installed on the host: the .deb files are fetched with `apt-get download` and
unpacked with `dpkg-deb -x` into the cache directory (VDTEST_TINYGUEST_CACHE, default
/var/cache/vdtest-tinyguest), which also keeps every built initramfs (named by a hash of its
contents), so only the first run of a fresh machine downloads (~75 MB) and unpacks.
The cache and its files are world-readable: QEMU (libvirt-qemu) reads the kernel and initrd.

Import from live tests as `import tinyguest` (tests/live/conftest.py puts this directory on
sys.path). `python3 tests/live/tinyguest.py` prepares the cache (scripts/host-setup.sh runs it).
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape

CACHE = Path(os.environ.get("VDTEST_TINYGUEST_CACHE", "/var/cache/vdtest-tinyguest"))
EMULATOR = "/usr/bin/qemu-system-x86_64"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
# modules of the guest kernel /init loads (with their dependencies from modules.dep)
MODULES = ("virtio_pci", "virtio_console", "virtio_blk", "virtio_balloon", "pvpanic-mmio", "pvpanic-pci")
UP_MARK = "tinyguest: up"

INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp /run /var/run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
# the agent's port: /dev/vportNpM whose name is org.qemu.guest_agent.0 (no udev for the symlink)
agent_port() {
    for d in /sys/class/virtio-ports/*; do
        [ "$(cat "$d/name" 2>/dev/null)" = "org.qemu.guest_agent.0" ] && { echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}
start_agent() {
    i=0
    while ! agent_port >/dev/null; do i=$((i+1)); [ $i -gt 50 ] && { echo "tinyguest: no agent port"; return 1; }; sleep 0.1; done
    /usr/sbin/qemu-ga -m virtio-serial -p "$(agent_port)" -f /run/qemu-ga.pid -t /run -d
    echo "tinyguest: agent started"
}
echo "tinyguest: up"
@SNIPPET@
echo "tinyguest: snippet done"
while true; do sleep 3600; done
"""


def _lock():
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o755)
    fd = os.open(CACHE / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _unlock(fd):
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _run(argv, **kw):
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({cp.returncode}): {cp.stderr.strip()[-500:]}")
    return cp.stdout


def _kernel_package() -> str:
    """The image package linux-image-amd64 depends on, remembered in the cache (apt-cache
    takes seconds); delete CACHE to follow a newer kernel."""
    known = CACHE / "kernel-package"
    if known.exists():
        return known.read_text().strip()
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise RuntimeError(f"apt-cache depends linux-image-amd64 names no image package:\n{out}")
    known.write_text(m.group(1) + "\n")
    return m.group(1)


def _unpacked(package: str) -> Path:
    """CACHE/pkg/PACKAGE: the package's files, unpacked once (apt-get download, dpkg-deb -x)."""
    dest = CACHE / "pkg" / package
    if (dest / ".done").exists():
        return dest
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    os.chmod(dl, 0o777)  # apt's _apt user downloads into it when it can
    for old in dl.glob(f"{package}_*.deb"):
        old.unlink()
    _run(["apt-get", "download", "-q", package], cwd=dl)
    debs = sorted(dl.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} left no .deb in {dl}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(debs[-1]), str(dest)])
    for deb in debs:
        deb.unlink()
    (dest / ".done").write_text(debs[-1].name + "\n")
    return dest


def _kernel_tree() -> tuple[Path, str]:
    """(unpacked image package, kernel release)."""
    pkg = _unpacked(_kernel_package())
    releases = sorted(p.name for p in (pkg / "lib" / "modules").iterdir())
    if not releases:
        raise RuntimeError(f"{pkg} has no /lib/modules/<release>")
    return pkg, releases[-1]


def kernel() -> Path:
    """The distribution kernel in the cache (world-readable), unpacked from its bzImage into
    the ELF vmlinux it carries (XZ-compressed in Debian's): QEMU boots that through its PVH
    entry point (CONFIG_PVH), skipping the real-mode stub whose decompression alone takes
    ~25 s under TCG."""
    fd = _lock()
    try:
        pkg, release = _kernel_tree()
        target = CACHE / f"vmlinux-{release}"
        if not target.exists():
            import lzma

            data = (pkg / "boot" / f"vmlinuz-{release}").read_bytes()
            start = data.find(b"\xfd7zXZ\x00")
            if start < 0:
                raise RuntimeError(f"vmlinuz-{release} carries no XZ-compressed kernel")
            elf = lzma.LZMADecompressor().decompress(data[start:])
            if not elf.startswith(b"\x7fELF"):
                raise RuntimeError(f"vmlinuz-{release}: the XZ payload is not an ELF image")
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(elf)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        return target
    finally:
        _unlock(fd)


def _module_files(pkg: Path, release: str, names=MODULES) -> list[str]:
    """Module paths (relative to lib/modules/RELEASE) in load order, dependencies first. The
    package ships no modules.dep (depmod writes it at install): each .ko's own modinfo
    `depends=` field says what it needs."""
    base = pkg / "lib" / "modules" / release
    by_name = {p.name[:-3].replace("-", "_"): p for p in (base / "kernel").rglob("*.ko")}
    order: list[str] = []

    def depends(path: Path) -> list[str]:
        m = re.search(rb"\0depends=([^\0]*)\0", path.read_bytes())
        return [d for d in (m.group(1).decode().split(",") if m else []) if d]

    def add(name: str):
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            return  # built into this kernel
        rel = str(path.relative_to(base))
        if rel in order:
            return
        for dep in depends(path):
            add(dep)
        order.append(rel)

    for name in names:
        add(name)
    return order


def _ldd(binary: Path) -> list[str]:
    out = _run(["ldd", str(binary)])
    libs = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class _Cpio:
    """A newc ("070701") cpio archive, what the kernel unpacks as initramfs."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1
        self.seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        name = name.lstrip("/")
        if name in self.seen:
            return
        self.seen.add(name)
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + nb)
        self.buf.write(b"\0" * (-(len(hdr) + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dirs(self, path: str):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), 0o040755)

    def file(self, path: str, data: bytes, mode: int = 0o644):
        self.dirs(os.path.dirname(path))
        self._entry(path, 0o100000 | mode, data)

    def symlink(self, path: str, target: str):
        self.dirs(os.path.dirname(path))
        self._entry(path, 0o120777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600):
        self.dirs(os.path.dirname(path))
        self._entry(path, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.seen.discard("TRAILER!!!")
        return self.buf.getvalue()


def initramfs(snippet: str = "", *, agent: bool = False) -> Path:
    """A gzipped initramfs whose /init runs `snippet` (shell) after boot; with agent=True
    qemu-ga and its libraries are in it (call `start_agent` in the snippet). Cached by content."""
    fd = _lock()
    try:
        pkg, release = _kernel_tree()
        busybox = _unpacked("busybox-static") / "bin" / "busybox"
        mods = _module_files(pkg, release)
        files: list[tuple[str, bytes, int]] = [
            ("/init", INIT.replace("@SNIPPET@", snippet).encode(), 0o755),
            ("/bin/busybox", busybox.read_bytes(), 0o755),
            ("/etc/modules.order", ("\n".join(Path(m).name for m in mods) + "\n").encode(), 0o644),
        ]
        base = pkg / "lib" / "modules" / release
        files += [(f"/lib/modules/{Path(m).name}", (base / m).read_bytes(), 0o644) for m in mods]
        links: list[tuple[str, str]] = []
        if agent:
            ga = _unpacked("qemu-guest-agent") / "usr" / "sbin" / "qemu-ga"
            files.append(("/usr/sbin/qemu-ga", ga.read_bytes(), 0o755))
            for lib in _ldd(ga):
                real = os.path.realpath(lib)
                files.append((lib, Path(real).read_bytes(), 0o755))
        key = hashlib.sha256(release.encode())
        for path, data, mode in files:
            key.update(path.encode() + b"\0" + hashlib.sha256(data).digest() + str(mode).encode())
        target = CACHE / f"initramfs-{key.hexdigest()[:16]}.cpio.gz"
        if target.exists():
            return target
        cpio = _Cpio()
        for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/proc", "/sys", "/tmp", "/run", "/var/run", "/etc"):
            cpio.dirs(d)
        cpio.chardev("/dev/console", 5, 1)
        cpio.chardev("/dev/null", 1, 3, 0o666)
        cpio.symlink("/bin/sh", "busybox")
        for path, data, mode in files:
            cpio.file(path, data, mode)
        for path, dest in links:
            cpio.symlink(path, dest)
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(gzip.compress(cpio.finish(), compresslevel=6))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return target
    finally:
        _unlock(fd)


def serial_log(name: str) -> Path:
    """Where the guest's serial console is logged (virtlogd writes it)."""
    return Path("/var/log/libvirt/qemu") / f"{name}-serial.log"


def domain_xml(name: str, snippet: str = "", *, agent: bool = False, agent_channel: bool | None = None,
               virt_type: str = "qemu", memory_mib: int = 128, vcpus: int = 1, machine: str = "pc",
               panic: str | None = None, on_crash: str = "destroy", balloon: str | None = "virtio",
               serial: bool = True, cpu: str = "", memory_backing: str = "", cmdline: str = "",
               devices: str = "", extra: str = "") -> str:
    """Domain XML of a tiny guest named `name` (vdtest-*) that boots the distribution kernel
    with an initramfs running `snippet`. `agent` puts qemu-ga in the initramfs; `agent_channel`
    (default: agent) adds the org.qemu.guest_agent.0 channel; `panic` a <panic model=...>;
    `balloon` the memballoon model or None for none; `serial` a pty serial+console logged to
    `serial_log(name)`; `cpu`, `memory_backing`, `devices` and `extra` are raw XML."""
    if not name.startswith("vdtest-"):
        raise ValueError(f"live-test objects are named vdtest-*, not {name!r}")
    if agent_channel is None:
        agent_channel = agent
    vmlinuz = kernel()
    initrd = initramfs(snippet, agent=agent)
    parts = []
    if serial:
        parts.append(f"    <serial type='pty'><log file='{escape(str(serial_log(name)))}' append='off'/>"
                     "<target port='0'/></serial>\n"
                     "    <console type='pty'><target type='serial' port='0'/></console>\n")
    if agent_channel:
        parts.append(f"    <channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel>\n")
    if panic:
        parts.append(f"    <panic model='{escape(panic)}'/>\n")
    parts.append(f"    <memballoon model='{escape(balloon)}'/>\n" if balloon else "    <memballoon model='none'/>\n")
    if devices:
        parts.append(devices.rstrip("\n") + "\n")
    args = f"console=ttyS0 panic=0 quiet loglevel=4 {cmdline}".strip()
    return (f"<domain type='{virt_type}'>\n"
            f"  <name>{escape(name)}</name>\n"
            f"  <memory unit='MiB'>{memory_mib}</memory>\n"
            f"  <vcpu>{vcpus}</vcpu>\n"
            f"{memory_backing}"
            "  <os>\n"
            f"    <type arch='x86_64' machine='{escape(machine)}'>hvm</type>\n"
            f"    <kernel>{escape(str(vmlinuz))}</kernel>\n"
            f"    <initrd>{escape(str(initrd))}</initrd>\n"
            f"    <cmdline>{escape(args)}</cmdline>\n"
            "  </os>\n"
            "  <features><acpi/></features>\n"
            f"{cpu}"
            "  <on_poweroff>destroy</on_poweroff>\n"
            "  <on_reboot>restart</on_reboot>\n"
            f"  <on_crash>{escape(on_crash)}</on_crash>\n"
            f"{extra}"
            "  <devices>\n"
            f"    <emulator>{EMULATOR}</emulator>\n"
            f"{''.join(parts)}"
            "  </devices>\n"
            "</domain>\n")


def wait_for_serial(name: str, text: str, timeout: float = 30.0) -> str:
    """The serial log once it contains `text`; RuntimeError with its tail after `timeout`."""
    path = serial_log(name)
    deadline = time.monotonic() + timeout
    data = ""
    while time.monotonic() < deadline:
        try:
            data = path.read_text(errors="replace")
        except FileNotFoundError:
            data = ""
        if text in data:
            return data
        time.sleep(0.1)
    raise RuntimeError(f"{name}: {text!r} not on the serial console within {timeout:g} s; tail:\n{data[-1500:]}")


def prepare() -> None:
    """Fill the cache: kernel, busybox, qemu-ga, and the two initramfs variants."""
    kernel()
    initramfs("")
    initramfs("", agent=True)


if __name__ == "__main__":
    t0 = time.monotonic()
    prepare()
    print(f"tinyguest: cache ready in {CACHE} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
