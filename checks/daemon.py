"""The libvirt daemon: is the right one running, can a client reach its socket,
can it write its log."""
from __future__ import annotations

import posixpath

from virtdoctor.api import (Auto, FactUnavailable, Fail, MakeDir, Pass, RestartDaemon, RunCommand, SetConfKey, Skip, Warn,
                            check, hookimpl, parse_uri, plan)

RUN_DIR = "/run/libvirt"
LOG_DIR = "/var/log/libvirt"
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
VIRTQEMUD_CONF = "/etc/libvirt/virtqemud.conf"

# monolithic libvirtd and the modular daemons (libvirt >= 5.6), with their sockets
MONOLITHIC = "libvirtd"
MODULAR = ("virtqemud", "virtnetworkd", "virtstoraged")


def running(facts, name: str) -> list:
    """Processes named `name` that are alive (facts.running: zombies are not running)."""
    return facts.running(name)


def socket_path(daemon: str) -> str:
    return f"{RUN_DIR}/{'libvirt' if daemon == MONOLITHIC else daemon}-sock"


def daemon_mode(facts) -> str:
    """Which daemon serves qemu:///system here: "modular" or "monolithic" (facts.daemon
    decides, once: what runs, what sockets exist, what is installed)."""
    return facts.daemon.mode


def _uri(facts):
    return parse_uri(facts.resolved_uri)


def _has_systemd(facts) -> bool:
    return facts.is_dir("/run/systemd/system")


@check("daemon-socket-missing", scope="host", area="daemon", severity="error",
       title="The libvirt daemon runs and answers on its socket", needs=("libvirt-installed",), plans=True)
def daemon_socket_missing(facts):
    """Looks at the daemon that serves the URI (monolithic libvirtd or modular
    virtqemud, by what runs, what sockets exist and what is installed), its
    process, its UNIX socket, and whether it answers a connection in time.
    Why: else every client fails with "Failed to connect socket to
    '/var/run/libvirt/libvirt-sock': No such file or directory".
    Fix safety: safe; starts the daemon, changes no configuration."""
    uri = _uri(facts)
    if uri.is_remote:
        return Skip(f"{uri.uri} is a remote URI: the daemon to check runs on {uri.host or 'another host'}")
    if uri.path == "/session":
        return Skip("qemu:///session starts its own per-user daemon on demand")
    if uri.driver not in ("qemu", "lxc", "network", "storage", "nodedev", "nwfilter", "secret", "interface", "ch"):
        return Skip(f"{uri.driver}:// needs no system daemon check")
    mode = daemon_mode(facts)
    daemons = (MONOLITHIC,) if mode == "monolithic" else MODULAR[:1]
    daemon = daemons[0]
    sock = socket_path(daemon)
    procs = running(facts, daemon)
    evidence = {"mode": mode, "daemon": daemon, "socket": sock, "pids": [p.pid for p in procs],
                "socket_exists": facts.exists(sock), "uri": uri.uri}
    if not procs and not evidence["socket_exists"]:
        return Fail(f"{daemon} is not running and {sock} does not exist: clients fail with "
                    f"\"Failed to connect socket to '{sock}': No such file or directory\"", evidence,
                    plan=start_daemon(facts, daemon, stale_socket=False))
    if not procs:
        if _has_systemd(facts):
            # socket activation: systemd holds the socket and starts the daemon on demand
            return Pass(f"{sock} is held by systemd socket activation", evidence)
        return Fail(f"{sock} exists but no {daemon} process owns it (a stale socket): clients fail with "
                    f"\"Failed to connect socket to '{sock}': Connection refused\"", evidence,
                    plan=start_daemon(facts, daemon, stale_socket=True))
    if not evidence["socket_exists"]:
        return Fail(f"{daemon} runs (pid {procs[0].pid}) but {sock} is missing: was it started "
                    f"with another unix_sock_dir, or is it still starting?", evidence)
    try:
        err = facts.libvirt.connect_error()
    except Exception as exc:  # libvirt-python missing: the socket evidence is all we have
        return Pass(f"{daemon} runs (pid {procs[0].pid}) with its socket {sock}; "
                    f"connection not tried: {exc}", evidence)
    if err:
        evidence["connect_error"] = err
        if "did not answer" in err:
            return Fail(f"{daemon} runs (pid {procs[0].pid}) but {err}", evidence)
        return Pass(f"{daemon} runs with its socket; the connection failed for another reason: {err}", evidence)
    return Pass(f"{daemon} runs (pid {procs[0].pid}) and answers on {sock}", evidence)


def start_daemon(facts, daemon: str, *, stale_socket: bool):
    """The plan to start a daemon that is not running (when it runs but does not
    answer, or its socket is elsewhere, a person must look: no plan)."""
    actions = []
    notes = []
    if _has_systemd(facts):
        units = [f"{daemon}.socket", f"{daemon}.service"] if daemon == MONOLITHIC else \
            [f"{d}.socket" for d in MODULAR] + ["virtlogd.socket"]
        return plan(f"Start {daemon} through systemd", Auto.SAFE,
                    RunCommand(["systemctl", "start", *units], f"systemctl start {' '.join(units)}",
                               wait_for=socket_path(daemon)))
    if stale_socket:
        # a stale socket from a dead daemon: the daemon refuses to start over it
        actions.append(RunCommand(["rm", "-f", socket_path(daemon)], f"remove the stale socket {socket_path(daemon)}"))
    for d, _why in log_dirs(facts):
        if not facts.exists(d):
            actions.append(MakeDir(d, 0o700))
            notes.append(f"{d} is missing and the daemon or QEMU fails without it (daemon-log-dir-missing)")
    if not running(facts, "virtlogd"):
        actions.append(RunCommand(["virtlogd", "-d"], "start virtlogd (QEMU's log daemon)",
                                  wait_for=f"{RUN_DIR}/virtlogd-sock"))
    names = [daemon] if daemon == MONOLITHIC else list(MODULAR)
    for name in names:
        if facts.which(name):
            actions.append(RunCommand([name, "-d"], f"start {name} in the background",
                                      wait_for=socket_path(name)))
    notes.append("no systemd here: the daemon is started by hand and will not come back after a reboot "
                 "unless your init system starts it")
    return plan(f"Start {daemon} ({'monolithic' if daemon == MONOLITHIC else 'modular'} daemon)",
                Auto.SAFE, *actions, notes=notes)


def log_dirs(facts) -> list[tuple[str, str]]:
    """(directory, why) for every file the daemon logs to: libvirtd.conf's
    `log_outputs` file outputs, else libvirt's default file for a daemon
    started without systemd (/var/log/libvirt/libvirtd.log), plus the QEMU log
    directory virtlogd writes to."""
    conf = VIRTQEMUD_CONF if daemon_mode(facts) == "modular" else LIBVIRTD_CONF
    outputs = facts.conf_value(conf, "log_outputs")
    dirs: list[tuple[str, str]] = []
    if outputs:
        for out in str(outputs).split():
            parts = out.split(":", 2)
            if len(parts) == 3 and parts[1] == "file":
                dirs.append((posixpath.dirname(parts[2]) or "/", f"log_outputs in {conf}: {parts[2]}"))
    elif not _has_systemd(facts):
        name = "libvirtd" if conf == LIBVIRTD_CONF else "virtqemud"
        dirs.append((LOG_DIR, f"default log file {LOG_DIR}/{name}.log of a daemon started without systemd"))
    dirs.append((f"{LOG_DIR}/qemu", "QEMU's per-domain logs (virtlogd)"))
    seen, out = set(), []
    for d, why in dirs:
        if d not in seen:
            seen.add(d)
            out.append((d, why))
    return out


@check("daemon-log-dir-missing", scope="host", area="daemon", severity="error",
       title="The daemon's log directory exists", needs=("libvirt-installed",), plans=True)
def daemon_log_dir_missing(facts):
    """Looks at the directories of the daemon's log files (log_outputs, else the
    default /var/log/libvirt/libvirtd.log) and of QEMU's domain logs.
    Why: without them the daemon exits at start with "failed to open
    /var/log/libvirt/libvirtd.log: No such file or directory", and domains fail
    to start when /var/log/libvirt/qemu is missing.
    Fix safety: safe; creates directories (0700 root)."""
    missing, bad = [], []
    for d, why in log_dirs(facts):
        st = facts.stat(d)
        if st is None:
            missing.append((d, why))
        elif not st.is_dir:
            bad.append((d, why))
    evidence = {"missing": [d for d, _ in missing], "not_a_directory": [d for d, _ in bad],
                "checked": [d for d, _ in log_dirs(facts)]}
    if bad:
        return Fail(f"{bad[0][0]} is not a directory ({bad[0][1]})", evidence)
    if missing:
        d, why = missing[0]
        return Fail(f"{d} does not exist ({why}): the daemon exits with \"failed to open {d}/...: "
                    f"No such file or directory\"", evidence,
                    plan=create_log_dirs([d for d, _ in missing], start_again(facts)))
    return Pass("log directories exist: " + ", ".join(evidence["checked"]), evidence)


def start_again(facts) -> tuple:
    """The actions that bring the serving daemon back after a fix of what stopped it: when
    it is not running (and no systemd brings it up), start it with the arguments it is
    configured to start with (facts.daemon: the running or configured command line,
    /etc/default, /etc/sysconfig, systemd units), virtlogd first, and wait until its socket
    answers. Empty when it runs."""
    try:
        layout = facts.daemon
        info = layout.serving
    except FactUnavailable:
        return ()
    if info.running or layout.systemd or not info.installed:
        return ()
    args = tuple(a for a in (info.args or (info.installed,)) if a not in ("-d", "--daemon"))
    actions = []
    if not running(facts, "virtlogd") and facts.which("virtlogd"):
        actions.append(RunCommand(["virtlogd", "-d"], "start virtlogd (QEMU's log daemon)",
                                  wait_for=f"{RUN_DIR}/virtlogd-sock"))
    actions.append(RestartDaemon(info.name, (), socket_path(info.name), args=args))
    return tuple(actions)


def create_log_dirs(dirs: list[str], start: tuple = ()):
    actions = [MakeDir(d, 0o700) for d in sorted(dirs, key=len)]
    if start:
        name = start[-1].name
        return plan(f"Create {', '.join(sorted(dirs, key=len))} (0700, root) and start {name} again "
                    f"({start[-1].command()})", Auto.SAFE, *actions, *start,
                    notes=[f"{name} exited without its log directory: it is started with the arguments it is "
                           "configured to start with, and the fix waits until its socket answers"])
    return plan(f"Create {', '.join(sorted(dirs, key=len))} (0700, root)", Auto.SAFE, *actions)


QEMU_CONF = "/etc/libvirt/qemu.conf"
DBUS_SOCKET = "/run/dbus/system_bus_socket"
DBUS_DAEMONS = ("dbus-daemon", "dbus-broker", "dbus-broker-lau")


@check("qemu-user-missing", scope="host", area="daemon", severity="error",
       title="The user and group QEMU runs as exist", needs=("libvirt-installed",), plans=True)
def qemu_user_missing(facts):
    """Looks at `user` and `group` in /etc/libvirt/qemu.conf (or the build's default
    account, libvirt-qemu on Debian) against the root's /etc/passwd and /etc/group; a
    qemu.conf with a syntax error is reported here with its file:line, because the daemon
    cannot read user/group from it either.
    Why: the QEMU driver does not load: "Failed to parse user 'libvirt-qemu'", then
    "Initialization of QEMU state driver failed", and the daemon exits.
    Fix safety: unsafe; points qemu.conf at an existing account (which owns the disk images
    and /dev/kvm access from then on) and restarts the daemon so it reads the file."""
    if not facts.is_dir("/etc/libvirt") and facts.which("libvirtd") is None and facts.which("virtqemud") is None:
        return Skip("libvirt is not installed (no /etc/libvirt, no libvirtd or virtqemud)")
    try:
        facts.conf(QEMU_CONF)
    except Exception as exc:
        if hasattr(exc, "line") and hasattr(exc, "path"):
            return Fail(f"cannot read user/group from {QEMU_CONF}: syntax error at {exc.path}:{exc.line}: "
                        f"{getattr(exc, 'msg', exc)} (the daemon refuses the file as well)",
                        {"file": exc.path, "line": exc.line, "error": str(exc)},
                        plan=plan(f"Correct the syntax error at {exc.path}:{exc.line}", Auto.MANUAL,
                                  notes=[str(exc), "then restart the daemon so it reads the file"]))
        raise
    qemu = facts.qemu_account()
    evidence = {"user": qemu.user, "group": qemu.group, "source": qemu.source,
                "user_exists": qemu.account is not None, "group_exists": qemu.gid is not None}
    where = "qemu.conf" if qemu.source == "qemu.conf" else "the built-in default (qemu.conf sets no user)"
    if qemu.account is None:
        return Fail(f"user '{qemu.user}' from {where} does not exist in /etc/passwd: the daemon fails with "
                    f"\"invalid argument: Failed to parse user '{qemu.user}'\" and \"Initialization of QEMU state driver failed\"",
                    evidence, plan=point_qemu_conf_at_account(facts, qemu))
    if qemu.gid is None:
        return Fail(f"group '{qemu.group}' from {where} does not exist in /etc/group: the daemon fails with "
                    f"\"invalid argument: Failed to parse group '{qemu.group}'\" and \"Initialization of QEMU state driver failed\"",
                    evidence, plan=point_qemu_conf_at_account(facts, qemu))
    return Pass(f"QEMU runs as {qemu.user}:{qemu.group} ({where}); both exist", evidence)


def _account_candidates(facts, qemu) -> tuple[str | None, str | None]:
    """An existing user and group for qemu.conf: the distribution's QEMU account first."""
    user = qemu.user if qemu.account is not None else None
    if user is None:
        for name in ("libvirt-qemu", "qemu"):
            if facts.account(name) is not None:
                user = name
                break
    group = qemu.group if qemu.gid is not None else None
    if group is None and user is not None:
        for name in (user, "kvm"):
            if facts.group(name) is not None:
                group = name
                break
        if group is None:
            acct = facts.account(user)
            grp = facts.group(acct.gid) if acct else None
            group = grp.name if grp else None
    return user, group


def restart_action(facts, daemon: str):
    """How to make the daemon re-read its configuration: systemctl where systemd runs,
    else stop by pid and start again (or just start when it is not running)."""
    pids = [p.pid for p in running(facts, daemon)]
    if _has_systemd(facts):
        return RunCommand(["systemctl", "restart", f"{daemon}.service"], f"systemctl restart {daemon}",
                          wait_for=socket_path(daemon)), bool(pids)
    return RestartDaemon(daemon, tuple(pids), socket_path(daemon)), bool(pids)


def point_qemu_conf_at_account(facts, qemu):
    user, group = _account_candidates(facts, qemu)
    if user is None or group is None:
        return plan("Create QEMU's account, or point qemu.conf at an existing one", Auto.MANUAL,
                    RunCommand(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                "--gid", "kvm", qemu.user], f"create the user {qemu.user}"),
                    notes=["no libvirt-qemu or qemu account exists on this host"])
    actions = []
    if user != qemu.user or qemu.source != "qemu.conf":
        actions.append(SetConfKey(QEMU_CONF, "user", user))
    if group != qemu.group or qemu.source != "qemu.conf" or qemu.gid is None:
        actions.append(SetConfKey(QEMU_CONF, "group", group))
    daemon = "virtqemud" if daemon_mode(facts) == "modular" else MONOLITHIC
    restart, was_running = restart_action(facts, daemon)
    actions.append(restart)
    notes = [f"{daemon} reads qemu.conf only at start: "
             + (f"it is restarted (pid {', '.join(str(p.pid) for p in running(facts, daemon))}); "
                "running guests keep running" if was_running else "it is not running and is started")]
    notes.append(f"QEMU will run as {user}:{group}: disk images, /dev/kvm and other files must be "
                 "reachable by that account (dynamic_ownership relabels images)")
    keys = " and ".join(f"{a.key} = \"{a.value}\"" for a in actions if isinstance(a, SetConfKey))
    return plan(f"Set {keys} in {QEMU_CONF} and {'restart' if was_running else 'start'} {daemon}",
                Auto.UNSAFE, *actions, notes=notes)


@check("dbus-unavailable", scope="host", area="daemon", severity="warning",
       title="The D-Bus system bus is reachable", needs=("libvirt-installed",), plans=True)
def dbus_unavailable(facts):
    """Looks at the system bus socket /run/dbus/system_bus_socket and a dbus-daemon or
    dbus-broker process.
    Why: the daemon then logs "DBus not available, disabling firewalld support in
    bridge_network_driver" and non-root clients authorised through polkit fail with
    "internal error: Unable to get system bus connection: Could not connect: No such file or
    directory". Root on the local socket still works, hence a warning.
    Fix: manual; start the system bus (service dbus start, or dbus-daemon --system)."""
    node = facts.stat(DBUS_SOCKET)
    procs = [p for name in DBUS_DAEMONS for p in running(facts, name)]
    evidence = {"socket": DBUS_SOCKET, "socket_exists": node is not None,
                "bus_pids": [p.pid for p in procs], "dbus_installed": facts.which("dbus-daemon") is not None}
    consequence = ("non-root clients using polkit fail with \"internal error: Unable to get system bus "
                   "connection: Could not connect: No such file or directory\" and firewalld support is "
                   "disabled in the network driver")
    fix = start_dbus(facts, installed=evidence["dbus_installed"])
    if node is None:
        return Warn(f"the system bus socket {DBUS_SOCKET} does not exist: {consequence}", evidence, plan=fix)
    if not node.is_socket:
        return Warn(f"{DBUS_SOCKET} is not a socket: {consequence}", evidence, plan=fix)
    if not procs and facts.is_live and not _has_systemd(facts):
        return Warn(f"{DBUS_SOCKET} exists but no dbus-daemon or dbus-broker runs (a stale socket): "
                    f"{consequence}", evidence, plan=fix)
    return Pass(f"the system bus listens on {DBUS_SOCKET}", evidence)


def start_dbus(facts, *, installed: bool):
    if _has_systemd(facts):
        cmd = RunCommand(["systemctl", "start", "dbus.socket", "dbus.service"], "systemctl start dbus")
    else:
        cmd = RunCommand(["dbus-daemon", "--system", "--fork"], "start the system bus by hand",
                         wait_for=DBUS_SOCKET)
    notes = ["then restart the libvirt daemon: it looks for the bus only at start"]
    if not installed:
        notes.insert(0, "dbus is not installed: apt install dbus (dbus-daemon)")
    return plan("Start the D-Bus system bus", Auto.MANUAL, RunCommand(["mkdir", "-p", "/run/dbus"]), cmd,
                notes=notes)


CONFIG_FILES = ("/etc/libvirt/libvirtd.conf", "/etc/libvirt/virtqemud.conf", "/etc/libvirt/virtnetworkd.conf",
                "/etc/libvirt/virtstoraged.conf", "/etc/libvirt/virtlogd.conf", "/etc/libvirt/virtlockd.conf",
                "/etc/libvirt/qemu.conf", "/etc/libvirt/network.conf", "/etc/libvirt/libvirt.conf")


@check("config-syntax-error", scope="host", area="daemon", severity="error",
       title="libvirt's configuration files parse", needs=("libvirt-installed",), plans=True)
def config_syntax_error(facts):
    """Parses every libvirt configuration file that exists (libvirtd.conf, the
    modular daemons' files, qemu.conf, network.conf, libvirt.conf) with a port
    of libvirt's own parser (virconf.c).
    Why: one syntax error and the daemon refuses to start: "Can't load config
    file: configuration file syntax error: /etc/libvirt/libvirtd.conf:2:
    expecting a value"; in qemu.conf it stops the QEMU driver, in libvirt.conf
    every client connection.
    Fix safety: manual; the line is named, only a person knows what was meant."""
    broken, checked, unreadable = [], [], []
    for path in CONFIG_FILES:
        if not facts.exists(path):
            continue
        try:
            facts.conf(path)
        except FactUnavailable as exc:
            unreadable.append(f"{path}: {exc}")
            continue
        except Exception as exc:  # confparse.ConfError: file, line and libvirt's message
            line = getattr(exc, "line", None)
            msg = getattr(exc, "msg", str(exc))
            broken.append({"file": path, "line": line, "error": msg})
            continue
        checked.append(path)
    evidence = {"checked": checked, "broken": broken, "unreadable": unreadable}
    if broken:
        first = broken[0]
        more = f" (and {len(broken) - 1} more file(s))" if len(broken) > 1 else ""
        return Fail(f"configuration file syntax error: {first['file']}:{first['line']}: {first['error']}{more}: "
                    "the daemon that reads it refuses to start (\"Can't load config file\")", evidence,
                    plan=show_config_lines(broken))
    if unreadable:
        return Skip("cannot read " + "; ".join(unreadable), evidence)
    if not checked:
        return Skip("no libvirt configuration file found below /etc/libvirt", evidence)
    return Pass(f"{len(checked)} configuration files parse", evidence)


def show_config_lines(broken: list[dict]):
    return plan("Correct " + ", ".join(f"{b['file']} line {b['line']} ({b['error']})" for b in broken)
                + ", then restart the daemon", Auto.MANUAL,
                *[RunCommand(["sed", "-n", f"{max(1, (b['line'] or 1) - 2)},{(b['line'] or 1) + 2}p", b["file"]],
                             f"show the lines around {b['file']}:{b['line']}") for b in broken])


@hookimpl
def virtdoctor_checks():
    return [daemon_socket_missing, daemon_log_dir_missing, config_syntax_error, qemu_user_missing, dbus_unavailable]
