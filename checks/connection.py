"""Connecting to the daemon: which URI a client uses, whether a normal user may use the
system socket, and whether the daemon listens for remote (TCP/TLS) clients."""
from __future__ import annotations

import re

from virtdoctor.api import Auto, Fail, Pass, RunCommand, Skip, Warn, check, hookimpl, plan
from virtdoctor.api import tlsfacts as T
from virtdoctor.api import parse_uri

RUN_DIR = "/run/libvirt"
POLKIT_DIRS = ("/etc/polkit-1/rules.d", "/usr/share/polkit-1/rules.d")
POLKIT_LIBVIRT_POLICY = "/usr/share/polkit-1/actions/org.libvirt.unix.policy"
DBUS_SOCKET = "/run/dbus/system_bus_socket"
TCP_PORT, TLS_PORT = 16509, 16514


def _modular(facts) -> bool:
    return facts.daemon.mode == "modular"


def _socket_settings(facts) -> dict:
    """The system socket and the settings that guard it (libvirtd.conf or virtqemud.conf):
    unix_sock_group (default root), unix_sock_rw_perms (0777 with polkit, else 0700),
    auth_unix_rw (polkit when libvirt is built with it: its policy file is installed)."""
    modular = _modular(facts)
    conf = "/etc/libvirt/virtqemud.conf" if modular else "/etc/libvirt/libvirtd.conf"
    sock = f"{RUN_DIR}/{'virtqemud' if modular else 'libvirt'}-sock"
    polkit_built = facts.exists(POLKIT_LIBVIRT_POLICY)
    auth = str(facts.conf_value(conf, "auth_unix_rw", "polkit" if polkit_built else "none"))
    perms = str(facts.conf_value(conf, "unix_sock_rw_perms", "0777" if auth == "polkit" else "0700"))
    group = str(facts.conf_value(conf, "unix_sock_group", "root"))
    return {"conf": conf, "socket": sock, "auth": auth, "perms": perms, "group": group}


def polkit_grants(facts) -> dict:
    """Groups and users that polkit rules give org.libvirt.unix.manage without a password
    (the `subject.isInGroup("libvirt")` rule Debian and Fedora ship), by rule file."""
    groups: dict[str, str] = {}
    users: dict[str, str] = {}
    for d in POLKIT_DIRS:
        for name in facts.listdir(d):
            if not name.endswith(".rules"):
                continue
            path = f"{d}/{name}"
            try:
                text = facts.read_text(path) or ""
            except Exception:
                continue
            if "org.libvirt.unix.manage" not in text:
                continue
            for g in re.findall(r'isInGroup\(\s*["\']([^"\']+)["\']\s*\)', text):
                groups.setdefault(g, path)
            for u in re.findall(r'subject\.user\s*==\s*["\']([^"\']+)["\']', text):
                users.setdefault(u, path)
    return {"groups": groups, "users": users}


def _users(facts) -> list[tuple[object, str]]:
    """Who to judge: the calling user when not root; as root, SUDO_USER and the members of
    group libvirt."""
    out: list[tuple[object, str]] = []
    if facts.euid != 0:
        acct = facts.account(facts.euid)
        return [(acct, "you")] if acct else []
    sudo = facts.env("SUDO_USER")
    if sudo and sudo != "root":
        acct = facts.account(sudo)
        if acct is not None:
            out.append((acct, "SUDO_USER"))
    grp = facts.group("libvirt")
    if grp is not None:
        for member in grp.members:
            acct = facts.account(member)
            if acct is not None and all(a.name != acct.name for a, _ in out):
                out.append((acct, "member of group libvirt"))
    return out


def _group_names(facts, gids) -> list[str]:
    return sorted(facts.accounts.group_name(g) for g in gids)


@check("non-root-access", scope="host", area="connection", severity="warning",
       title="Normal users can reach the system daemon", needs=("libvirt-installed",), plans=True)
def non_root_access(facts):
    """Looks at the system socket (mode, group, POSIX ACL), libvirtd.conf's unix_sock_group,
    unix_sock_rw_perms and auth_unix_rw, the polkit rules for org.libvirt.unix.manage, the
    user's groups (group libvirt) and the URI the user's virsh picks. As root it judges
    SUDO_USER and every member of group libvirt.
    Why: a normal user either gets "Failed to connect socket to
    '/var/run/libvirt/libvirt-sock': Permission denied" or "authentication unavailable: no
    polkit agent available to authenticate action 'org.libvirt.unix.manage'", or silently
    talks to qemu:///session and sees none of the system's VMs.
    Fix: manual; usermod -a -G libvirt USER (log in again), export
    LIBVIRT_DEFAULT_URI=qemu:///system."""
    users = _users(facts)
    s = _socket_settings(facts)
    if not users:
        grp = facts.group("libvirt")
        return Pass("no normal user to judge: run as root without SUDO_USER and group libvirt "
                    + ("has no members" if grp else "does not exist"), {"settings": s})
    node = facts.stat(s["socket"])
    run_dir = facts.stat(RUN_DIR)
    grants = polkit_grants(facts) if s["auth"] == "polkit" else {"groups": {}, "users": {}}
    results = []
    for acct, why in users:
        gids = acct.groups
        ev = {"user": acct.name, "why": why, "groups": _group_names(facts, gids), **s,
              "socket_exists": node is not None}
        problems, fixes = [], []
        if node is not None:
            ev.update(socket_mode=node.mode_text, socket_group=node.group, socket_acl=node.acl_text)
            writable = node.allowed(acct.uid, gids, "rw")
        else:
            sock_group = facts.group(s["group"])
            mode = int(s["perms"], 8) if re.fullmatch(r"0?[0-7]{3,4}", s["perms"]) else 0o700
            writable = bool(mode & 0o002) or bool(mode & 0o020 and sock_group and sock_group.gid in gids)
        if run_dir is not None and not run_dir.allowed(acct.uid, gids, "x"):
            writable = False
            problems.append(f"{RUN_DIR} ({run_dir.mode_text}) is not searchable by {acct.name}")
        if not writable:
            group = node.group if node is not None else s["group"]
            problems.append(f"{acct.name} cannot write {s['socket']} (group {group}): virsh fails with "
                            f"\"Failed to connect socket to '/var{s['socket']}': Permission denied\"")
            if group != "root":
                fixes.append(f"usermod -a -G {group} {acct.name}")
        elif s["auth"] == "polkit":
            named = acct.name in grants["users"]
            via = [g for g in grants["groups"] if facts.group(g) and facts.group(g).gid in gids]
            ev["polkit_grants"] = {"groups": grants["groups"], "users": grants["users"]}
            if not facts.exists(DBUS_SOCKET):
                problems.append("polkit is asked over D-Bus and the system bus is down: \"internal error: "
                                "Unable to get system bus connection: Could not connect: No such file or "
                                "directory\" (dbus-unavailable)")
            if not named and not via:
                wanted = next(iter(grants["groups"]), "libvirt")
                problems.append(f"no polkit rule lets {acct.name} manage libvirt (rules grant "
                                f"{', '.join(grants['groups']) or 'no group'}): virsh fails with \"authentication "
                                "unavailable: no polkit agent available to authenticate action "
                                "'org.libvirt.unix.manage'\"")
                fixes.append(f"usermod -a -G {wanted} {acct.name}")
        if why == "you" and not problems:
            try:
                uri = parse_uri(facts.resolved_uri)
            except Exception:
                uri = None
            if uri is not None and uri.path == "/session" and not facts.env("LIBVIRT_DEFAULT_URI"):
                system_vms = [n for n in facts.listdir("/etc/libvirt/qemu") if n.endswith(".xml")] \
                    if facts.exists("/etc/libvirt/qemu") else []
                if system_vms:
                    ev["system_domains"] = len(system_vms)
                    results.append(Warn(
                        f"virsh without -c uses {uri.uri} for {acct.name}, which holds only your own VMs; the "
                        f"{len(system_vms)} system VM(s) are in qemu:///system: export "
                        "LIBVIRT_DEFAULT_URI=qemu:///system (or virsh -c qemu:///system)",
                        ev, key=acct.name, plan=advise_group([], system_domains=True)))
                    continue
        if problems:
            ev["fix_commands"] = fixes
            results.append(Warn(f"{acct.name} ({why}): " + "; ".join(problems), ev, key=acct.name,
                                plan=advise_group(fixes, system_domains=False)))
        else:
            results.append(Pass(f"{acct.name} ({why}) can use {s['socket']}"
                                + (" (polkit rule for its group)" if s["auth"] == "polkit" else ""), ev, key=acct.name))
    return results


def advise_group(cmds: list[str], *, system_domains: bool):
    notes = ["the user must log in again (or run 'newgrp libvirt') for a new group to apply"]
    if system_domains:
        notes = ["add 'export LIBVIRT_DEFAULT_URI=qemu:///system' to the user's shell profile"]
    return plan("Give the user access to the system daemon", Auto.MANUAL,
                *[RunCommand(c.split(), c) for c in cmds], notes=notes)


# -- URIs -----------------------------------------------------------------------------------
@check("uri-implies-tls", scope="uri", area="connection", severity="error",
       title="The URI means the transport you expect", plans=True)
def uri_implies_tls(facts):
    """Looks at the URI in use (-c, LIBVIRT_DEFAULT_URI, uri_default, after uri_aliases of
    libvirt.conf): `qemu://HOST/system` (two slashes, a host, no +transport) means TLS.
    Why: a user who meant the local daemon gets "Cannot read CA certificate
    '/etc/pki/CA/cacert.pem': No such file or directory".
    Fix: manual; qemu:///system for this host, qemu+ssh://HOST/system for another, or set up
    TLS (tls-ca-missing creates the certificates)."""
    try:
        uri_text = facts.resolved_uri
    except Exception as exc:
        return Skip(f"cannot resolve the URI: {exc}")
    uri = parse_uri(uri_text)
    ev = {"uri": uri.uri, "given": facts.uri, "transport": uri.transport or "(default)", "host": uri.host}
    if facts.uri and facts.uri != uri_text:
        ev["alias"] = facts.uri
    if not uri.uses_tls:
        kind = "a local socket" if not uri.host else f"{uri.transport}"
        return Pass(f"{uri.uri} uses {kind}, not TLS", ev)
    if uri.transport == "tls":
        return Pass(f"{uri.uri} asks for TLS explicitly", ev)
    local = uri.host.lower() in T.local_names(facts)
    ca = T.client_paths(facts, uri.uri).ca
    ev.update(local=local, ca=ca, ca_exists=facts.stat(ca) is not None)
    if local:
        return Fail(f"{uri.uri} names this host with two slashes, which means TLS: without certificates it "
                    f"fails with \"Cannot read CA certificate '{ca}': No such file or directory\"; for the "
                    f"local daemon use {uri.driver}:///{uri.path.lstrip('/') or 'system'}", ev,
                    plan=advise_uri(uri, local=True))
    if not ev["ca_exists"]:
        return Fail(f"{uri.uri} means TLS to {uri.host} and {ca} does not exist: \"Cannot read CA certificate "
                    f"'{ca}': No such file or directory\"; use {uri.driver}+ssh://{uri.host}{uri.path} or set up TLS",
                    ev, plan=advise_uri(uri, local=False))
    return Pass(f"{uri.uri} means TLS to {uri.host}; the CA {ca} is present (the tls checks look at it)", ev)


def advise_uri(uri, *, local: bool):
    here = f"{uri.driver}:///{uri.path.lstrip('/') or 'system'}"
    if local:
        return plan(f"Use {here} for the local daemon", Auto.MANUAL,
                    RunCommand(["virsh", "-c", here, "list", "--all"]),
                    notes=[f"export LIBVIRT_DEFAULT_URI={here}",
                           "or keep the URI and create certificates: virtdoctor fix --unsafe --only tls-ca-missing"])
    return plan(f"Use SSH to reach {uri.host}, or set up TLS", Auto.MANUAL,
                RunCommand(["virsh", "-c", f"{uri.driver}+ssh://{uri.host}{uri.path}", "list", "--all"]),
                notes=["TLS needs the CA certificate of the server's CA plus a client certificate "
                       "(https://wiki.libvirt.org/page/TLSSetup)"])


def listening_ports(facts) -> set[int] | None:
    """TCP ports in LISTEN state from /proc/net/tcp and tcp6; None when not visible."""
    ports: set[int] = set()
    seen = False
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            text = facts.read_text(f)
        except Exception:
            text = None
        if text is None:
            continue
        seen = True
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                try:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
                except (ValueError, IndexError):
                    pass
    return ports if seen else None


def _systemd_unit(facts, unit: str) -> str | None:
    for d in ("/etc/systemd/system/sockets.target.wants", "/etc/systemd/system/libvirtd.service.wants",
              "/etc/systemd/system/virtproxyd.service.wants"):
        if facts.exists(f"{d}/{unit}"):
            return f"{d}/{unit}"
    return None


def _listen_state(facts) -> dict:
    conf = T.daemon_conf_path(facts)
    listening, how = T.daemon_listens(facts)
    ltls = facts.conf_value(conf, "listen_tls", 1)
    ltcp = facts.conf_value(conf, "listen_tcp", 0)
    tcp_port = int(str(facts.conf_value(conf, "tcp_port", TCP_PORT)) or TCP_PORT)
    tls_port = int(str(facts.conf_value(conf, "tls_port", TLS_PORT)) or TLS_PORT)
    state = {"conf": conf, "daemon": how, "listen_flag": listening, "listen_tls": ltls, "listen_tcp": ltcp,
             "tcp_port": tcp_port, "tls_port": tls_port}
    for kind in ("tcp", "tls"):
        unit = _systemd_unit(facts, f"libvirtd-{kind}.socket") or _systemd_unit(facts, f"virtproxyd-{kind}.socket")
        on = bool(unit) or bool(listening and str(state[f"listen_{kind}"]) not in ("0", "False"))
        state[kind] = on
        if unit:
            state[f"{kind}_unit"] = unit
    ports = listening_ports(facts)
    if ports is not None:
        state["ports_listening"] = sorted(p for p in ports if p in (tcp_port, tls_port))
    return state


@check("tcp-listen-disabled", scope="host", area="connection", severity="warning",
       title="The daemon listens for remote clients when asked to", needs=("libvirt-installed",), plans=True)
def tcp_listen_disabled(facts):
    """Looks at the daemon's arguments (--listen), listen_tls/listen_tcp/tcp_port/tls_port of
    its config, the libvirtd-tls/-tcp socket units and the ports in LISTEN state
    (/proc/net/tcp), against the URI in use when it names this host.
    Why: remote qemu+tcp:// or qemu:// clients get "unable to connect to server at
    'HOST:16509': Connection refused"; a listen_tls = 1 without --listen is silently ignored.
    Fix: manual; start the daemon with --listen (or enable libvirtd-tls.socket), with TLS or
    SASL authentication."""
    try:
        uri = parse_uri(facts.resolved_uri)
    except Exception:
        uri = None
    state = _listen_state(facts)
    remote_kind = None
    if uri is not None and uri.is_remote and uri.transport in ("", "tls", "tcp"):
        if uri.host.lower() not in T.local_names(facts):
            return Skip(f"{uri.uri} names another host ({uri.host}): its daemon cannot be inspected from here")
        remote_kind = "tcp" if uri.transport == "tcp" else "tls"
    state["uri"] = uri.uri if uri else None
    if remote_kind:
        port = state[f"{remote_kind}_port"]
        if not state[remote_kind]:
            why = []
            if state["listen_flag"] is False:
                why.append("the daemon runs without --listen")
            elif state["listen_flag"] is None:
                why.append(state["daemon"])
            if str(state[f"listen_{remote_kind}"]) in ("0", "False"):
                why.append(f"listen_{remote_kind} = 0 in {state['conf']}")
            return Fail(f"{uri.uri} needs the daemon to listen on {remote_kind.upper()} port {port}, but "
                        f"{'; '.join(why) or 'nothing enables it'}: clients get \"unable to connect to server at "
                        f"'{uri.host}:{port}': Connection refused\"", state, plan=advise_listen(facts, state["conf"]))
        if "ports_listening" in state and port not in state["ports_listening"]:
            return Fail(f"listening on {remote_kind.upper()} is configured but nothing listens on port {port}", state,
                        plan=advise_listen(facts, state["conf"]))
        return Pass(f"the daemon listens on {remote_kind.upper()} port {port} for {uri.uri}", state)
    # no remote URI: report what is configured but not effective
    for kind in ("tls", "tcp"):
        explicit = facts.conf_value(state["conf"], f"listen_{kind}")
        if explicit is not None and str(explicit) not in ("0", "False") and not state[kind] \
                and state["listen_flag"] is False:
            return Warn(f"listen_{kind} = {explicit} in {state['conf']} but {state['daemon']}: the setting is "
                        f"ignored and remote {'qemu://' if kind == 'tls' else 'qemu+tcp://'} clients get "
                        "\"Connection refused\"", state, plan=advise_listen(facts, state["conf"]))
    on = [k.upper() for k in ("tls", "tcp") if state[k]]
    if on:
        return Pass(f"the daemon listens for remote clients on {', '.join(on)}", state)
    return Pass("the daemon listens only on its local socket (remote clients use qemu+ssh://)", state)


def advise_listen(facts, conf: str):
    notes = ["libvirtd --listen serves TLS by default (listen_tls = 1): it needs the CA, server certificate "
             "and key (tls-ca-missing, tls-server-cert-missing)",
             "plain TCP (listen_tcp = 1) must use SASL (auth_tcp = \"sasl\"): never 'none' on a network"]
    if facts.is_dir("/run/systemd/system"):
        return plan("Enable the daemon's TLS socket", Auto.MANUAL,
                    RunCommand(["systemctl", "enable", "--now", "libvirtd-tls.socket"]), notes=notes)
    return plan("Restart the daemon with --listen", Auto.MANUAL,
                RunCommand(["libvirtd", "-d", "--listen", "-f", conf or "/etc/libvirt/libvirtd.conf"]),
                notes=notes)


@hookimpl
def virtdoctor_checks():
    return [non_root_access, uri_implies_tls, tcp_listen_disabled]
