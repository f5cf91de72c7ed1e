"""Helper daemons and hooks: virtlogd, virtlockd, lockd disk leases, libvirt's hook
scripts."""
from __future__ import annotations

import datetime as _dt
import re
import shlex

from virtdoctor.api import Auto, Fail, FactUnavailable, Pass, RunCommand, Skip, Warn, check, hookimpl, plan

INIT_D = "/etc/init.d"


def _manual(summary: str, *cmds: str):
    """A manual plan: its commands are printed (never run by `fix`)."""
    return plan(summary, Auto.MANUAL, *(RunCommand(shlex.split(c), summary=c) for c in cmds))


def _start_plan(facts, name: str, why: str):
    """Start a helper daemon: its sysv init script when installed, else `NAME -d`."""
    script = f"{INIT_D}/{name}"
    sock = f"/run/libvirt/{name}-sock"
    argv = [script, "start"] if facts.exists(script) else [name, "-d"]
    return plan(f"Start {name} ({why})", Auto.SAFE,
                RunCommand(argv, summary=f"start {name}: {shlex.join(argv)}", wait_for=sock),
                notes=[f"systemd hosts: systemctl enable --now {name}.socket"])


def _daemon_state(facts, name: str):
    d = facts.helperd.daemon(name)
    if d.socket is None:
        return d, f"its socket /run/libvirt/{name}-sock does not exist"
    if d.accepts is False:
        return d, f"its socket {d.socket} refuses connections ({d.refused}): a stale socket"
    if not d.pids:
        return d, f"no {name} process runs"
    return d, None


@check("virtlogd-unavailable", scope="host", area="daemon", severity="error", plans=True,
       title="virtlogd runs (QEMU's logs go through it)")
def virtlogd(facts):
    """Looks at qemu.conf `stdio_handler` (absent: "logd"), the socket
    /run/libvirt/virtlogd-sock (exists, accepts a connect) and a virtlogd process.
    Why: with stdio_handler "logd" every domain start asks virtlogd for the log file;
    without it no domain starts: "Failed to connect socket to
    '/run/libvirt/virtlogd-sock': No such file or directory" (seen live on 9.0.0; the
    binary also has a "can't connect to virtlogd" prefix; a stale socket: "Connection
    refused").
    Fix safety: safe: start virtlogd (its init script, else `virtlogd -d`)."""
    try:
        handler = facts.helperd.stdio_handler()
    except FactUnavailable as exc:
        return Skip(str(exc))
    if handler == "file":
        return Pass("qemu.conf stdio_handler = \"file\": QEMU logs without virtlogd")
    d, problem = _daemon_state(facts, "virtlogd")
    if problem is None:
        return Pass(f"virtlogd runs (pid {', '.join(map(str, d.pids))}), {d.socket} accepts connections")
    return Fail(f"virtlogd is not available: {problem}; every domain start fails with \"Failed to connect socket to "
                f"'/run/libvirt/virtlogd-sock': No such file or directory\"",
                {"socket": d.socket, "pids": list(d.pids), "refused": d.refused, "stdio_handler": handler},
                plan=_start_plan(facts, "virtlogd", "domain starts need it"))


@check("virtlockd-unavailable", scope="host", area="daemon", severity="error", plans=True,
       title="virtlockd runs when qemu.conf uses the lockd lock manager")
def virtlockd(facts):
    """Looks at qemu.conf `lock_manager`; when it is "lockd", the socket
    /run/libvirt/virtlockd-sock (exists, accepts a connect) and a virtlockd process.
    Why: without systemd nothing starts virtlockd, and every domain start fails
    ("Failed to connect socket to '/run/libvirt/virtlockd-sock': No such file or
    directory"). Fix safety: safe: start virtlockd (never kill it while guests run:
    their leases go with it)."""
    try:
        conf = facts.helperd.lockd
    except FactUnavailable as exc:
        return Skip(str(exc))
    if conf.lock_manager != "lockd":
        return Pass(f"qemu.conf lock_manager is {conf.lock_manager or 'unset'}: virtlockd is not needed")
    d, problem = _daemon_state(facts, "virtlockd")
    if problem is None:
        return Pass(f"virtlockd runs (pid {', '.join(map(str, d.pids))})")
    return Fail(f"qemu.conf lock_manager = \"lockd\" but virtlockd is not available: {problem}; domain starts fail "
                "with \"Failed to connect socket to '/run/libvirt/virtlockd-sock'\"",
                {"socket": d.socket, "pids": list(d.pids), "refused": d.refused},
                plan=_start_plan(facts, "virtlockd", "lock_manager = \"lockd\" needs it"))


@check("disk-lease-conflict", scope="domain", area="storage", severity="error", needs=("libvirt",), plans=True,
       title="With lockd, no other domain holds a lease on the domain's disks")
def disk_lease_conflict(facts, dom):
    """Looks at qemu.conf `lock_manager`; with "lockd", the other defined domains using
    the same writable, non-shareable disk (running ones hold the lease) and, with a
    `file_lockspace_dir`, locks on the lease files there.
    Why: the second domain's start fails with "resource busy: Lockspace resource
    'PATH' is locked": the intended protection against two writers, often hit after a
    clone that kept the source path. No automatic fix."""
    try:
        conf = facts.helperd.lockd
    except FactUnavailable as exc:
        return Skip(str(exc))
    if conf.lock_manager != "lockd":
        return Pass("no lockd lock manager: leases are not used (image-write-locked covers QEMU's own locks)")
    try:
        uses = facts.storage.disk_uses
    except FactUnavailable as exc:
        return Skip(str(exc))
    out = []
    for d in dom.disks:
        path = d.source_path
        if not path or d.readonly or d.shareable or d.device not in ("disk", "lun"):
            continue
        others = [u for u in uses if u.path == path and u.domain != dom.name and not u.readonly and not u.shareable]
        running = sorted({u.domain for u in others if u.active})
        if running and not (dom.info is not None and dom.info.active):
            out.append(Fail(f"disk {d.target}: {path} is leased by running domain {', '.join(running)}: the start "
                            f"fails with \"resource busy: Lockspace resource '{path}' is locked\"",
                            {"target": d.target, "path": path, "domains": running}, key=d.target,
                            plan=_manual(f"Stop {', '.join(running)} or give this domain its own disk",
                                         *(f"virsh shutdown {n}" for n in running))))
        elif others and not running:
            names = sorted({u.domain for u in others})
            out.append(Warn(f"disk {d.target}: {path} is also a writable disk of {', '.join(names)}: only one of them "
                            "can hold the lease and run", {"target": d.target, "path": path, "domains": names},
                            key=d.target, plan=plan("Give each domain its own disk image", Auto.MANUAL)))
    return out or Pass("no other domain uses this domain's writable disks")


@check("hook-script-failed", scope="host", area="lifecycle", severity="error", plans=True,
       title="libvirt's hook scripts can run")
def hook_script(facts):
    """Looks at every hook libvirt may run (/etc/libvirt/hooks/{daemon,qemu,network,
    lxc,libxl} and DRIVER.d/*): executable, its interpreter (shebang) exists, `sh -n`
    syntax of shell hooks, and the daemon log's "Hook script execution failed" lines.
    Hooks are never run. Why: a hook that exits non-zero refuses every domain (or
    network) start: "Hook script execution failed: internal error: Child process
    (... /etc/libvirt/hooks/qemu NAME prepare begin -) unexpected exit status 1".
    No automatic fix: repair or move the hook away (libvirt notices added or removed
    hooks only at daemon restart)."""
    try:
        hooks = facts.helperd.hooks
    except FactUnavailable as exc:
        return Skip(str(exc))
    logged = _hook_failures(facts)
    if not hooks and not logged:
        return Pass("no hook scripts installed")
    out = []
    for h in hooks:
        ev = {"hook": h.path, "executable": h.executable, "interpreter": h.shebang}
        fixplan = _manual(f"Run {h.path} by hand with the arguments from the error (sh -x shows where it fails) and "
                          "repair it, or move it out of /etc/libvirt/hooks; libvirt notices added or removed hooks "
                          "only when the daemon restarts",
                          f"ls -l {h.path}", f"mv {h.path} /root/{h.driver}-hook.disabled")
        if not h.executable or not h.regular:
            out.append(Warn(f"{h.path} is not an executable file: libvirt ignores it", ev, key=h.path,
                            plan=_manual(f"Make {h.path} executable if it should run (then restart libvirtd), or "
                                         "remove it", f"chmod +x {h.path}")))
            continue
        if h.interpreter_ok is False:
            out.append(Fail(f"{h.path}: its interpreter {h.shebang} does not exist: every {h.driver} hook call fails "
                            "(\"Hook script execution failed\")", ev, key=h.path, plan=fixplan))
            continue
        try:
            err = facts.helperd.syntax_error(h)
        except FactUnavailable:
            err = None
        if err:
            out.append(Fail(f"{h.path} has a syntax error ({err}): every {h.driver} hook call fails", ev,
                            key=h.path, plan=fixplan))
            continue
        seen = [ln for ln in logged if h.path in ln and _after(ln, h.mtime)]
        if seen:
            out.append(Fail(f"{h.path} failed: {seen[-1].strip()[-300:]}", {**ev, "log": seen[-3:]}, key=h.path,
                            plan=fixplan))
    names = {h.path for h in hooks}
    stale = [ln for ln in logged if not any(n in ln for n in names)]
    if stale and not out:
        out.append(Warn("the daemon log records hook failures (\"Hook script execution failed\") for hooks that "
                        "are no longer installed or were changed since: " + stale[-1].strip()[-300:],
                        {"log": stale[-3:]}, key="log"))
    return out or Pass(f"{len(hooks)} hook(s) installed, executable, interpreters present, syntax clean")


def _after(line: str, mtime: float) -> bool:
    """Whether a daemon log line ("2026-12-03 19:20:01.123+0000: ...") was written after
    the hook last changed (a failure before a repair is history)."""
    m = re.match(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.\d+)?([+-]\d{4})", line)
    if not m:
        return True
    try:
        ts = _dt.datetime.strptime(m.group(1) + m.group(2), "%Y-%m-%d %H:%M:%S%z").timestamp()
    except ValueError:
        return True
    return ts >= mtime - 1


def _hook_failures(facts) -> list[str]:
    out = []
    for path in ("/var/log/libvirt/libvirtd.log", "/var/log/libvirt/virtqemud.log"):
        try:
            text = facts.read_tail(path, 1 << 20) or ""
        except FactUnavailable:
            continue
        out += [ln for ln in text.splitlines() if "Hook script execution failed" in ln]
    return out[-20:]


@hookimpl
def virtdoctor_checks():
    return [virtlogd, virtlockd, disk_lease_conflict, hook_script]
