"""The libvirt daemon layout, decided once: monolithic libvirtd or the modular
daemons (virtqemud & co., libvirt >= 5.6), the config file in effect, and the
arguments the daemon runs with or is configured to start with.

Where the arguments come from, in order:
- the running process's command line (`/proc/PID/cmdline`, zombies excluded);
- else the service manager's configuration: systemd units
  (`/etc/systemd/system/NAME.service`, else `/lib` or `/usr/lib`) with their
  drop-ins (`NAME.service.d/*.conf`, later files win, an empty `ExecStart=`
  resets) and the environment files they name (Debian `/etc/default/libvirtd`,
  RHEL `/etc/sysconfig/libvirtd`: `LIBVIRTD_ARGS=...`, `$VAR` expanded);
- else the environment file alone (a SysV or hand-started host).
Socket units that are enabled (`sockets.target.wants/`) are listed too: with
socket activation the daemon listens on what systemd hands it.

Everything reads through `HostFacts`, so it works below `--root`.
"""
from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field

from virtdoctor.facts.procs import is_zombie, stat_state  # noqa: F401  (re-exported)

RUN_DIR = "/run/libvirt"
MONOLITHIC = "libvirtd"
MODULAR = ("virtqemud", "virtnetworkd", "virtstoraged")
CONF_DIR = "/etc/libvirt"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
ENV_FILES = ("/etc/default/{name}", "/etc/sysconfig/{name}")


def socket_path(daemon: str) -> str:
    """The read-write UNIX socket of a daemon (libvirtd's is libvirt-sock)."""
    return f"{RUN_DIR}/{'libvirt' if daemon == MONOLITHIC else daemon}-sock"


def conf_path(daemon: str) -> str:
    return f"{CONF_DIR}/{daemon}.conf"


def config_arg(args: tuple[str, ...] | list[str]) -> str | None:
    """The `-f FILE` / `--config FILE` / `--config=FILE` of a daemon command line."""
    args = list(args)
    for i, a in enumerate(args):
        if a in ("-f", "--config") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a.startswith("-f") and len(a) > 2 and not a.startswith("--"):
            return a[2:]
    return None


def has_listen(args: tuple[str, ...] | list[str]) -> bool:
    """`-l`/`--listen`, alone or in a bundle of short options (`-dl`)."""
    return any(a in ("-l", "--listen") or (a.startswith("-") and not a.startswith("--") and "l" in a[1:]
                                            and "f" not in a[1:])
               for a in list(args)[1:])


@dataclass(frozen=True)
class UnitConfig:
    """A systemd service as configured: the effective ExecStart and its files."""

    name: str
    path: str | None  # the unit file in effect, None when not installed
    dropins: tuple[str, ...] = ()
    exec_start: tuple[str, ...] = ()  # argv after $VAR expansion
    environment_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class DaemonInfo:
    """One daemon: what runs and what would start."""

    name: str
    installed: str | None  # host path of the binary
    pids: tuple[int, ...]
    args: tuple[str, ...]  # the running command line, else the configured one (argv[0] first)
    args_source: str  # "pid N", "systemd libvirtd.service (+ drop-ins)", "/etc/default/libvirtd", "default"
    conf: str  # the config file in effect: -f/--config, else /etc/libvirt/NAME.conf
    socket: str
    unit: UnitConfig | None = None

    @property
    def running(self) -> bool:
        return bool(self.pids)

    @property
    def listen(self) -> bool:
        return has_listen(self.args)


@dataclass(frozen=True)
class DaemonLayout:
    """Which daemon serves qemu:///system and how it is configured."""

    mode: str  # "monolithic" | "modular"
    why: str
    daemons: dict = field(default_factory=dict)  # name -> DaemonInfo (libvirtd, virtqemud, virtproxyd...)
    systemd: bool = False  # /run/systemd/system exists: systemd is the init
    sockets: tuple[str, ...] = ()  # enabled socket units (host paths of their links)

    @property
    def daemon(self) -> str:
        """The daemon that serves qemu:///system: libvirtd, or virtqemud."""
        return MONOLITHIC if self.mode == "monolithic" else MODULAR[0]

    @property
    def serving(self) -> DaemonInfo:
        return self.daemons[self.daemon]

    @property
    def conf(self) -> str:
        """The config file in effect for the serving daemon."""
        return self.serving.conf

    def info(self, name: str) -> DaemonInfo | None:
        return self.daemons.get(name)


# -- systemd and environment files --------------------------------------------------------
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=value lines of /etc/default/* and /etc/sysconfig/* (shell-quoted values,
    comments and blank lines ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _ASSIGN.match(line)
        if not m:
            continue
        try:
            words = shlex.split(m.group(2), comments=True)
        except ValueError:
            words = [m.group(2).strip()]
        out[m.group(1)] = " ".join(words)
    return out


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] keys of a unit file or drop-in, every value in order
    (continuation lines joined)."""
    out: dict[str, list[str]] = {}
    section = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _expand(words: list[str], env: dict[str, str]) -> list[str]:
    """systemd's $VAR (split into words) and ${VAR} (one word) expansion."""
    out: list[str] = []
    for w in words:
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", w):
            out.extend(env.get(w[1:], "").split())
        else:
            out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), w))
    return out


def unit_config(facts, name: str) -> UnitConfig:
    unit = f"{name}.service"
    path = next((f"{d}/{unit}" for d in UNIT_DIRS if facts.exists(f"{d}/{unit}")), None)
    if path is None:
        return UnitConfig(unit, None)
    texts = [facts.read_text(path) or ""]
    dropins: list[str] = []
    seen: dict[str, str] = {}
    for d in UNIT_DIRS:  # a drop-in name in /etc hides the same name in /lib
        for f in facts.listdir(f"{d}/{unit}.d"):
            if f.endswith(".conf") and f not in seen:
                seen[f] = f"{d}/{unit}.d/{f}"
    for f in sorted(seen):
        dropins.append(seen[f])
        texts.append(facts.read_text(seen[f]) or "")
    exec_start: list[str] = []
    env_files: list[str] = []
    env: dict[str, str] = {}
    for text in texts:
        keys = parse_unit(text)
        for value in keys.get("EnvironmentFile", []):
            env_files.append(value.lstrip("-"))
        for value in keys.get("Environment", []):
            env.update(parse_env_file("\n".join(shlex.split(value))))
        for value in keys.get("ExecStart", []):
            exec_start = [] if not value else shlex.split(value.lstrip("@-:+!"))
    for f in env_files:
        env.update(parse_env_file(facts.read_text(f) or ""))
    return UnitConfig(unit, path, tuple(dropins), tuple(_expand(exec_start, env)), tuple(env_files))


def _configured_args(facts, name: str, binary: str | None, systemd: bool) -> tuple[tuple[str, ...], str, UnitConfig | None]:
    unit = unit_config(facts, name)
    if systemd and unit.exec_start:
        src = f"systemd {unit.name}" + (f" (+ {', '.join(posixpath.basename(d) for d in unit.dropins)})"
                                        if unit.dropins else "")
        return unit.exec_start, src, unit
    var = f"{name.upper()}_ARGS"
    for pattern in ENV_FILES:
        path = pattern.format(name=name)
        text = facts.read_text(path)
        if text is not None:
            value = parse_env_file(text).get(var)
            if value is not None:
                return (binary or name, *value.split()), f"{path} ({var})", unit
    return ((binary or name,), "default", unit)


def read_layout(facts) -> DaemonLayout:
    """Decide the layout once: "modular" when virtqemud runs or its socket
    exists, "monolithic" when libvirtd runs or its socket exists, else by what is
    installed (libvirtd wins: Debian 12 ships and starts it)."""
    systemd = facts.is_dir("/run/systemd/system")
    daemons = {}
    for name in (MONOLITHIC, *MODULAR, "virtproxyd", "virtlogd"):
        procs = facts.running(name)
        binary = facts.which(name)
        if procs:
            args, src, unit = tuple(procs[0].cmdline) or (name,), f"pid {procs[0].pid}", None
        else:
            args, src, unit = _configured_args(facts, name, binary, systemd)
        daemons[name] = DaemonInfo(name=name, installed=binary, pids=tuple(p.pid for p in procs), args=args,
                                   args_source=src, conf=config_arg(args) or conf_path(name),
                                   socket=socket_path(name), unit=unit)
    q, m = daemons["virtqemud"], daemons[MONOLITHIC]
    if q.running or facts.exists(q.socket):
        mode, why = "modular", ("virtqemud runs" if q.running else f"{q.socket} exists")
    elif m.running or facts.exists(m.socket):
        mode, why = "monolithic", ("libvirtd runs" if m.running else f"{m.socket} exists")
    elif m.installed is None and q.installed is not None:
        mode, why = "modular", "virtqemud is installed and libvirtd is not"
    else:
        mode, why = "monolithic", "libvirtd is installed" if m.installed else "neither daemon runs or is installed"
    sockets = tuple(f"/etc/systemd/system/sockets.target.wants/{f}"
                    for f in facts.listdir("/etc/systemd/system/sockets.target.wants")
                    if f.endswith(".socket") and (f.startswith("libvirtd") or f.startswith("virt")))
    return DaemonLayout(mode=mode, why=why, daemons=daemons, systemd=systemd, sockets=sockets)
