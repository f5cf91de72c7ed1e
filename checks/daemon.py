"""The libvirt daemon: is the right one running, can a client reach its socket,
can it write its log."""
from __future__ import annotations

import os

from virtdoctor.api import (Auto, Fail, MakeDir, Pass, RunCommand, Skip, check, hookimpl, plan)

RUN_DIR = "/run/libvirt"
LOG_DIR = "/var/log/libvirt"
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
VIRTQEMUD_CONF = "/etc/libvirt/virtqemud.conf"

# monolithic libvirtd and the modular daemons (libvirt >= 5.6), with their sockets
MONOLITHIC = "libvirtd"
MODULAR = ("virtqemud", "virtnetworkd", "virtstoraged")


def socket_path(daemon: str) -> str:
    return f"{RUN_DIR}/{'libvirt' if daemon == MONOLITHIC else daemon}-sock"


def daemon_mode(facts) -> str:
    """Which daemon serves qemu:///system here: "modular" when virtqemud is
    running, or its socket exists, or libvirtd is not installed while virtqemud
    is; "monolithic" otherwise (Debian 12 ships and starts libvirtd)."""
    if facts.process_named("virtqemud") or facts.exists(socket_path("virtqemud")):
        return "modular"
    if facts.process_named("libvirtd") or facts.exists(socket_path(MONOLITHIC)):
        return "monolithic"
    if facts.which("libvirtd") is None and facts.which("virtqemud") is not None:
        return "modular"
    return "monolithic"


def _uri(facts):
    from virtdoctor.facts.uri import parse_uri

    return parse_uri(facts.resolved_uri)


def _has_systemd(facts) -> bool:
    return facts.is_dir("/run/systemd/system")


@check("daemon-socket-missing", scope="host", area="daemon", severity="error",
       title="The libvirt daemon runs and answers on its socket")
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
    procs = facts.process_named(daemon)
    evidence = {"mode": mode, "daemon": daemon, "socket": sock, "pids": [p.pid for p in procs],
                "socket_exists": facts.exists(sock), "uri": uri.uri}
    if not procs and not evidence["socket_exists"]:
        return Fail(f"{daemon} is not running and {sock} does not exist: clients fail with "
                    f"\"Failed to connect socket to '{sock}': No such file or directory\"", evidence)
    if not procs:
        if _has_systemd(facts):
            # socket activation: systemd holds the socket and starts the daemon on demand
            return Pass(f"{sock} is held by systemd socket activation", evidence)
        return Fail(f"{sock} exists but no {daemon} process owns it (a stale socket): clients fail with "
                    f"\"Failed to connect socket to '{sock}': Connection refused\"", evidence)
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


@daemon_socket_missing.fixer
def start_daemon(finding, facts):
    ev = finding.evidence
    daemon = ev.get("daemon", MONOLITHIC)
    if ev.get("pids"):
        return None  # running but not answering or socket elsewhere: a person must look
    actions = []
    notes = []
    if _has_systemd(facts):
        units = [f"{daemon}.socket", f"{daemon}.service"] if daemon == MONOLITHIC else \
            [f"{d}.socket" for d in MODULAR] + ["virtlogd.socket"]
        return plan(f"Start {daemon} through systemd", Auto.SAFE,
                    RunCommand(["systemctl", "start", *units], f"systemctl start {' '.join(units)}",
                               wait_for=socket_path(daemon)))
    if ev.get("socket_exists"):
        # a stale socket from a dead daemon: the daemon refuses to start over it
        actions.append(RunCommand(["rm", "-f", socket_path(daemon)], f"remove the stale socket {socket_path(daemon)}"))
    for d, _why in log_dirs(facts):
        if not facts.exists(d):
            actions.append(MakeDir(d, 0o700))
            notes.append(f"{d} is missing and the daemon or QEMU fails without it (daemon-log-dir-missing)")
    if not facts.process_named("virtlogd"):
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
                dirs.append((os.path.dirname(parts[2]) or "/", f"log_outputs in {conf}: {parts[2]}"))
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
       title="The daemon's log directory exists")
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
                    f"No such file or directory\"", evidence)
    return Pass("log directories exist: " + ", ".join(evidence["checked"]), evidence)


@daemon_log_dir_missing.fixer
def create_log_dir(finding, facts):
    dirs = finding.evidence.get("missing") or []
    if not dirs:
        return None
    actions = [MakeDir(d, 0o700) for d in sorted(dirs, key=len)]
    return plan(f"Create {', '.join(sorted(dirs, key=len))} (0700, root)", Auto.SAFE, *actions,
                notes=["start the daemon afterwards if it exited (daemon-socket-missing)"])


@hookimpl
def virtdoctor_checks():
    return [daemon_socket_missing, daemon_log_dir_missing]
