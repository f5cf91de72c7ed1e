"""Host facts: the only door virtdoctor's checks have to the machine.

Everything a check may know about the host comes from `HostFacts`: files below
`--root`, stat and POSIX ACLs, users and groups from the root's own /etc/passwd
and /etc/group, libvirt's config files (parsed once), processes, sysfs network
links, command output with a timeout, the KVM probe and the libvirt connection.
Checks never call `open`, `os`, `subprocess` or libvirt themselves, so a test
fakes a host with a temporary root directory and recorded libvirt XML.

Paths are always written as on a real host ("/etc/libvirt/qemu.conf"); only this
layer knows where the root is.
"""
from __future__ import annotations

import glob as _glob
import os
import stat as _stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from virtdoctor.facts.accounts import Account, Accounts, Group
from virtdoctor.facts.files import FileInfo, read_acl
from virtdoctor.facts.kvm import KvmProbe, probe_kvm
from virtdoctor.facts.links import Link, read_links
from virtdoctor.facts.procs import Proc, is_zombie, read_processes
from virtdoctor.model import NEEDS, FactUnavailable
from virtdoctor.root import Root

__all__ = ["HostFacts", "FileInfo", "Account", "Group", "Proc", "Link", "KvmProbe", "Cmd",
           "QemuAccount", "FactUnavailable"]

SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
MAX_READ = 16 * 1024 * 1024


@dataclass(frozen=True)
class Cmd:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class QemuAccount:
    """The account QEMU processes run as on qemu:///system."""

    user: str
    group: str
    account: Account | None  # None: the user does not exist
    gid: int | None  # None: the group does not exist
    source: str  # where user/group came from: "qemu.conf" or "built-in default"
    dynamic_ownership: bool = True

    @property
    def label(self) -> str:
        return f"{self.user}:{self.group}"

    @property
    def gids(self) -> frozenset[int]:
        """Primary group from qemu.conf plus the user's supplementary groups
        (libvirt sets both when it drops privileges)."""
        gids = set(self.account.groups) if self.account else set()
        if self.gid is not None:
            gids.add(self.gid)
        return frozenset(gids)

    @property
    def uid(self) -> int | None:
        return self.account.uid if self.account else None




@dataclass(frozen=True, eq=False)
class HostFacts:
    """Immutable: what describes the host is given at construction (root, URI,
    euid, environment, and the providers tests inject); what is read from it is
    computed once, on first use (cached properties and `memo`)."""

    root: str = "/"
    uri: str | None = None
    offline: bool = False
    timeout: float = 5.0
    # injected by tests (or --root runs) in place of probing the real host
    kvm: KvmProbe | None = None
    libvirt_facts: Any = None
    processes_override: list[Proc] | None = None
    euid: int = field(default_factory=os.geteuid)
    environ: Mapping[str, str] | None = None  # None: this process's environment
    # fake_host: host path -> {"mode" | "type", "uid", "gid", "rdev"} laid over what stat() finds
    stat_overlay: Mapping[str, Mapping[str, int]] | None = field(default=None, repr=False)
    _conf_cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` once per facts object (per run) for `key`: the facts-layer
        modules' per-run cache, in place of module globals keyed by id(facts)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # -- where the facts come from -------------------------------------------
    @property
    def source(self) -> str:
        """"live" (this machine) or "root" (files below --root: a mounted image, a copy)."""
        return "live" if self.is_live else "root"

    def unfed(self, need: str) -> str | None:
        """None when this facts source can feed `need` (see NEEDS), else why not."""
        if need == "files":
            return None
        if need == "live":
            return None if self.is_live else f"looks at the running machine, not at --root {self.root}"
        if need == "root":
            return None if self.euid == 0 else "needs root"
        if need == "proc":
            if self.is_live or self.processes_override is not None or os.path.isdir(self.path("/proc/1")):
                return None
            return f"no processes to look at below --root {self.root}"
        if need == "dev":
            if self.is_live or self.stat_overlay or self.kvm is not None or os.path.isdir(self.path("/dev")):
                return None
            return f"no device nodes below --root {self.root}"
        if need == "logs":
            return None
        if need == "libvirt-installed":
            return self._libvirt_not_installed()
        if need == "libvirt":
            try:
                err = self.libvirt.connect_error()
            except FactUnavailable as exc:
                return str(exc)
            # a local URI that does not answer on a host without libvirt: the one reason
            return (self._libvirt_not_installed(local_only=True) or f"libvirt not reachable: {err}") if err else None
        raise ValueError(f"unknown need {need!r} (one of {', '.join(NEEDS)})")

    # -- paths and files -------------------------------------------------
    @cached_property
    def fs(self) -> Root:
        """The one Root of this run (virtdoctor.root): every path below --root."""
        return Root(self.root)

    @property
    def is_live(self) -> bool:
        """True when facts describe the running machine (root is /)."""
        return self.fs.is_live

    def path(self, host_path: str) -> str:
        """The real path of a host path below the root (links not resolved)."""
        return self.fs.join(host_path)

    def _real(self, host_path: str, *, follow: bool = True) -> str:
        """The real path with symlinks inside the root resolved below the root."""
        return self.fs.real(host_path, follow=follow)

    def host_path(self, real_path: str) -> str:
        return self.fs.host_path(real_path)

    def exists(self, host_path: str) -> bool:
        return os.path.lexists(self._real(host_path, follow=False))

    def is_dir(self, host_path: str) -> bool:
        return os.path.isdir(self._real(host_path))

    def listdir(self, host_path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._real(host_path)))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            return []
        except PermissionError as exc:
            raise FactUnavailable(f"cannot list {host_path}: permission denied") from exc

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.host_path(p) for p in _glob.glob(self.path(pattern)))

    def read_text(self, host_path: str, *, limit: int = MAX_READ) -> str | None:
        """The file's text (invalid UTF-8 replaced), None when it does not exist.
        Raises FactUnavailable when it exists but cannot be read."""
        data = self.read_bytes(host_path, limit=limit)
        return None if data is None else data.decode("utf-8", "replace")

    def read_bytes(self, host_path: str, *, limit: int = MAX_READ) -> bytes | None:
        real = self._real(host_path)
        try:
            with open(real, "rb") as fh:
                # in chunks: procfs/sysfs files refuse one huge read (ENOMEM)
                chunks, left = [], limit
                while left > 0:
                    chunk = fh.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    left -= len(chunk)
                return b"".join(chunks)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except IsADirectoryError as exc:
            raise FactUnavailable(f"{host_path} is a directory") from exc
        except OSError as exc:
            raise FactUnavailable(f"cannot read {host_path}: {exc.strerror or exc}") from exc

    def read_tail(self, host_path: str, max_bytes: int = 1 << 20) -> str | None:
        """The last `max_bytes` of a file (logs), None when absent."""
        real = self._real(host_path)
        try:
            with open(real, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                data = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise FactUnavailable(f"cannot read {host_path}: {exc.strerror or exc}") from exc
        if size > max_bytes:
            data = data.split(b"\n", 1)[-1]  # drop the partial first line
        return data.decode("utf-8", "replace")

    def stat(self, host_path: str, *, follow: bool = True) -> FileInfo | None:
        """Mode, owner, group, type and POSIX ACL of a path; None when absent
        (a dangling symlink with follow=True is absent too: see `exists`)."""
        real = self._real(host_path, follow=follow)
        try:
            st = os.stat(real) if follow else os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise FactUnavailable(f"cannot stat {host_path}: {exc.strerror or exc}") from exc
        acl = read_acl(real) if not _stat.S_ISLNK(st.st_mode) else ()
        mode, uid, gid, rdev = st.st_mode, st.st_uid, st.st_gid, st.st_rdev
        if self.stat_overlay and host_path in self.stat_overlay:
            fake = self.stat_overlay[host_path]
            if "type" in fake:  # a faked file type over the real permission bits
                mode = fake["type"] | _stat.S_IMODE(mode)
            mode, uid, gid, rdev = (fake.get("mode", mode), fake.get("uid", uid), fake.get("gid", gid),
                                    fake.get("rdev", rdev))
        accounts = self.accounts
        return FileInfo(path=host_path, mode=mode, uid=uid, gid=gid,
                        size=st.st_size, mtime=st.st_mtime, rdev=rdev, acl=acl,
                        owner=accounts.user_name(uid), group=accounts.group_name(gid))

    def realpath(self, host_path: str) -> str:
        return self.fs.resolve(host_path)

    def which(self, name: str, extra: tuple[str, ...] = ()) -> str | None:
        """The host path of an executable named `name` in the usual bin dirs."""
        if "/" in name:
            real = self._real(name)
            return name if os.path.isfile(real) and os.access(real, os.X_OK) else None
        for d in (*extra, *SEARCH_PATH):
            real = self._real(f"{d}/{name}")
            if os.path.isfile(real) and os.access(real, os.X_OK):
                return f"{d}/{name}"
        return None

    # -- accounts ---------------------------------------------------------
    @cached_property
    def accounts(self) -> Accounts:
        return Accounts.load(self.read_text("/etc/passwd") or "", self.read_text("/etc/group") or "")

    def account(self, name_or_uid: str | int) -> Account | None:
        return self.accounts.user(name_or_uid)

    def group(self, name_or_gid: str | int) -> Group | None:
        return self.accounts.group(name_or_gid)

    # -- config files -----------------------------------------------------
    def conf(self, host_path: str):
        """The parsed libvirt config file (a `confparse.Conf`), or None when
        absent. Raises `confparse.ConfError` (file and line) on a syntax error and
        FactUnavailable when unreadable; checks turn those into findings."""
        if host_path not in self._conf_cache:
            from virtdoctor import confparse

            try:
                text = self.read_text(host_path)
                self._conf_cache[host_path] = None if text is None else confparse.parse(text, host_path)
            except Exception as exc:  # remember failures too: parse once per run
                self._conf_cache[host_path] = exc
        value = self._conf_cache[host_path]
        if isinstance(value, Exception):
            raise value
        return value

    def conf_value(self, host_path: str, key: str, default: Any = None) -> Any:
        """One key of a config file, `default` when the file or key is absent or
        the file is broken (checks that care report the breakage themselves)."""
        try:
            conf = self.conf(host_path)
        except Exception:
            return default
        return default if conf is None else conf.get(key, default)

    def qemu_account(self) -> QemuAccount:
        """qemu.conf `user`/`group`, else the build's default: Debian documents
        it in the shipped qemu.conf as `#user = "libvirt-qemu"`. A qemu.conf
        with a syntax error is FactUnavailable: judging access for a guessed
        account would be a guess (and the daemon refuses the file anyway)."""
        from virtdoctor.facts.accounts import parse_account_spec

        conf_path = "/etc/libvirt/qemu.conf"
        text = None
        try:
            text = self.read_text(conf_path)
            self.conf(conf_path)
        except FactUnavailable:
            pass
        except Exception as exc:  # confparse.ConfError: the QEMU driver refuses the file too
            raise FactUnavailable(f"QEMU's account is unknown: {conf_path} does not parse ({exc}); "
                                  "config-syntax-error reports it") from exc
        user = self.conf_value(conf_path, "user")
        group = self.conf_value(conf_path, "group")
        source = "qemu.conf"
        default_user, default_group = _documented_default(text or "")
        if user is None:
            user, source = default_user or self._guess_default_user(), "built-in default"
        if group is None:
            group = default_group or user
        acct = parse_account_spec(self.accounts, str(user), kind="user")
        gid = parse_account_spec(self.accounts, str(group), kind="group")
        dyn = self.conf_value(conf_path, "dynamic_ownership", 1)
        return QemuAccount(user=str(user), group=str(group), account=acct, gid=gid,
                           source=source, dynamic_ownership=bool(dyn))

    def _guess_default_user(self) -> str:
        for name in ("libvirt-qemu", "qemu"):
            if self.accounts.user(name):
                return name
        return "libvirt-qemu"

    # -- processes, links, commands ---------------------------------------
    @cached_property
    def processes(self) -> list[Proc]:
        if self.processes_override is not None:
            return list(self.processes_override)
        return read_processes(self.root)

    def process_named(self, name: str) -> list[Proc]:
        return [p for p in self.processes if p.name == name]

    def running(self, name: str) -> list[Proc]:
        """Processes named `name` that are alive: a zombie (state Z/X in
        /proc/PID/stat: a daemon that just exited and is not reaped yet) is not
        running. The one zombie test for checks and facts."""
        out = []
        for p in self.process_named(name):
            try:
                stat = self.read_text(f"/proc/{p.pid}/stat")
            except FactUnavailable:
                stat = None
            if not is_zombie(stat):
                out.append(p)
        return out

    @cached_property
    def daemon(self):
        """The libvirt daemon layout (facts.daemon.DaemonLayout): monolithic or
        modular, the config file in effect, the arguments it runs or would start with."""
        from virtdoctor.facts.daemon import read_layout

        return read_layout(self)

    @cached_property
    def logs(self):
        """The log readers (facts.logs.Logs): daemon log files, QEMU's domain logs, the
        journal, the audit log; one regex for a daemon log line."""
        from virtdoctor.facts.logs import Logs

        return Logs(self)

    @cached_property
    def links(self) -> dict[str, Link]:
        return read_links(self.path("/sys/class/net"))

    def run(self, argv: list[str] | tuple[str, ...], *, timeout: float = 5.0, input: str | None = None) -> Cmd:
        """Run a command on the live host with a timeout. On a --root that is
        not / nothing is run: FactUnavailable."""
        if not self.is_live:
            raise FactUnavailable(f"not running {argv[0]} for --root {self.root}")
        try:
            cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                input=input, errors="replace", stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise FactUnavailable(f"{argv[0]}: not installed") from exc
        except PermissionError as exc:  # an unreadable directory on PATH: found nowhere else
            import shutil

            if shutil.which(argv[0]) is None:
                raise FactUnavailable(f"{argv[0]}: not installed") from exc
            raise FactUnavailable(f"{argv[0]}: {exc.strerror or exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise FactUnavailable(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise FactUnavailable(f"{argv[0]}: {exc.strerror or exc}") from exc
        return Cmd(tuple(argv), cp.returncode, cp.stdout, cp.stderr)

    def env(self, name: str, default: str | None = None) -> str | None:
        env = os.environ if self.environ is None else self.environ
        return env.get(name, default)

    # -- what is installed (facts/install.py) -----------------------------
    @cached_property
    def installation(self):
        """The distribution, libvirt's daemons and client, /etc/libvirt, the QEMU emulators."""
        from virtdoctor.facts.install import read_installation

        return read_installation(self)

    # -- stored definitions (facts/stored.py) ----------------------------
    @cached_property
    def stored_domains(self):
        """Every /etc/libvirt/qemu/*.xml as the daemon would load it (facts.stored.StoredDomain)."""
        from virtdoctor.facts.stored import read_stored

        return tuple(read_stored(self))

    @cached_property
    def domain_load_errors(self):
        """The daemon log's "Failed to load config for domain" records with their causes."""
        from virtdoctor.facts.stored import read_load_errors

        return tuple(read_load_errors(self))

    def _libvirt_not_installed(self, *, local_only: bool = False) -> str | None:
        """The one skip reason of every check that needs libvirt on a host without it."""
        from virtdoctor.facts.install import NOT_INSTALLED

        try:
            if local_only:
                from virtdoctor.facts.uri import parse_uri

                if parse_uri(self.resolved_uri).is_remote:
                    return None
            return None if self.installation.libvirt_installed else NOT_INSTALLED
        except Exception:
            return None

    # -- KVM and libvirt --------------------------------------------------
    def kvm_probe(self) -> KvmProbe:
        """Open /dev/kvm and ask it (API version, create a VM, SMM support)."""
        if self.kvm is not None:
            return self.kvm
        if not self.is_live:
            raise FactUnavailable(f"cannot probe /dev/kvm of --root {self.root}")
        return self.memo("kvm-probe", lambda: probe_kvm("/dev/kvm"))

    @property
    def libvirt(self):
        """The libvirt facts (capabilities, domains, networks...). Raises
        FactUnavailable under --offline or when libvirt-python is missing."""
        if self.libvirt_facts is not None:
            return self.libvirt_facts
        return self._live_libvirt

    @cached_property
    def _live_libvirt(self):
        if self.offline:
            raise FactUnavailable("--offline: not connecting to libvirt")
        if self.uri is None and not self.is_live:
            # the files are another system's (a mounted image, a copied /etc): this
            # machine's daemon would describe something else, so only when asked (-c)
            raise FactUnavailable(f"--root {self.root} is not this machine: not connecting to its libvirt "
                                  "(give -c URI to connect anyway)")
        from virtdoctor.facts.libvirt import LiveLibvirt

        return LiveLibvirt(self.resolved_uri, timeout=self.timeout)

    @cached_property
    def domains(self) -> tuple:
        """Every defined domain as a `domxml.Domain`, its XML parsed once with the
        hardened parser and shared by every check (domains whose XML does not
        parse are left out). Raises FactUnavailable without libvirt."""
        from virtdoctor.domxml import from_info
        from virtdoctor.model import ToolError

        out = []
        for info in self.libvirt.domains():
            try:
                out.append(from_info(info))
            except ToolError:
                continue
        return tuple(out)

    # -- storage, run-time state, helper daemons (facts/storage.py, runstate.py, helperd.py)
    @cached_property
    def storage(self):
        from virtdoctor.facts.storage import StorageFacts

        return StorageFacts(self)

    @cached_property
    def runstate(self):
        from virtdoctor.facts.runstate import RunState

        return RunState(self)

    @cached_property
    def helperd(self):
        from virtdoctor.facts.helperd import HelperDaemons

        return HelperDaemons(self)

    # -- networks and devices (catalogue part 2: networks, graphics, TPM, virtiofs, passthrough)
    @cached_property
    def netstate(self):
        """Routes, addresses, listeners, sysctls, bridge helper (facts.netstate.NetState)."""
        from virtdoctor.facts.netstate import NetState

        return NetState(self)

    @cached_property
    def virtnets(self):
        """libvirt's networks and the guests' NICs, parsed (facts.netstate.LibvirtNets)."""
        from virtdoctor.facts.netstate import LibvirtNets

        return LibvirtNets(self)

    @cached_property
    def devices(self):
        """swtpm, virtiofsd, PCI/IOMMU, USB and hostdev claims (facts.devices.Devices)."""
        from virtdoctor.facts.devices import Devices

        return Devices(self)

    def domain_caps(self, dom):
        """The domain capabilities (an lxml element) for `dom`'s emulator, arch,
        machine and virt type, asked once per run; raises FactUnavailable."""
        return self.libvirt.domcapabilities(dom.emulator, dom.arch or None, dom.machine or None,
                                            dom.virt_type or None)

    # -- security drivers, memory (issue 11) ---------------------------------
    @cached_property
    def lsm(self):
        """AppArmor/SELinux state, qemu.conf security_driver, denial records (facts.lsm)."""
        from virtdoctor.facts.lsm import read_lsm

        return read_lsm(self)

    @cached_property
    def memory(self):
        """hugetlbfs mounts, huge page pools, meminfo, memlock limits (facts.memory)."""
        from virtdoctor.facts.memory import read_memory

        return read_memory(self)

    @cached_property
    def resolved_uri(self) -> str:
        from virtdoctor.facts.uri import resolve_uri

        return resolve_uri(self.uri, env=os.environ if self.environ is None else self.environ,
                           euid=self.euid, facts=self)


def _documented_default(text: str) -> tuple[str | None, str | None]:
    import re

    # the shipped file's commented default (`#user = "libvirt-qemu"`), not the
    # indented doc examples above it (`#       user = "qemu"`)
    user = re.search(r'^#[ \t]?user[ \t]*=[ \t]*"([^"]+)"', text, re.M)
    group = re.search(r'^#[ \t]?group[ \t]*=[ \t]*"([^"]+)"', text, re.M)
    return (user.group(1) if user else None, group.group(1) if group else None)

