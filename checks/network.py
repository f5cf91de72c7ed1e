"""Networks: libvirt's virtual networks (defined, active, autostarted), the
tools they need (dnsmasq, firewall binaries), and the host links guests plug
into (bridges, bonds, macvtap lower devices)."""
from __future__ import annotations

from virtdoctor.api import (Action, Auto, DefineNetwork, DomainXMLError, FactUnavailable, Fail, Pass, RunCommand,
                            Severity, Skip, parse_xml_document,
                            StartNetwork, Warn, check, hookimpl, plan, redefine_plan)

DEFAULT_NETWORK = "default"
DEFAULT_TEMPLATE = "/usr/share/libvirt/networks/default.xml"
NETWORK_CONF = "/etc/libvirt/network.conf"
# libvirt 9.0 runs the firewall tools by the paths fixed at build time (Debian: /usr/sbin)
FIREWALL_DIRS = ("/usr/sbin", "/sbin")
FIREWALL_TOOLS = {
    None: ("iptables", "ip6tables", "ebtables"),  # libvirt without firewall_backend (<= 10.3)
    "iptables": ("iptables", "ip6tables"),
    "nftables": ("nft",),
}
FIREWALL_PACKAGES = {"iptables": "iptables", "ip6tables": "iptables", "ebtables": "ebtables", "nft": "nftables"}
# forward modes served by a libvirt-managed bridge (dnsmasq, firewall rules)
VIRTUAL_MODES = (None, "nat", "route", "open")
BAD_BOND_MODES = {"balance-alb": 6, "balance-tlb": 5}


def _xml(text: str):
    """The root element of libvirt's XML, through the hardened parser."""
    return parse_xml_document(text, "libvirt XML").getroot()


def interface_networks(root) -> list[str]:
    """Network names of a domain's <interface type='network'> NICs, in order."""
    out = []
    for iface in root.iterfind("devices/interface"):
        if iface.get("type") == "network":
            name = iface.find("source")
            if name is not None and name.get("network") and name.get("network") not in out:
                out.append(name.get("network"))
    return out


def network_users(facts) -> dict[str, list[str]]:
    """network name -> names of defined domains with a NIC on it."""
    users: dict[str, list[str]] = {}
    for dom in facts.domains:  # parsed once per run by the facts layer
        for net in interface_networks(dom.root):
            users.setdefault(net, []).append(dom.name)
    return users


def forward_mode(netroot) -> str | None:
    fwd = netroot.find("forward")
    if fwd is None:
        return None
    return fwd.get("mode") or "nat"


def needs_dnsmasq(netroot) -> bool:
    """As libvirt's networkStartDhcpDaemon decides: a bridge it manages, with
    DHCP (ranges or hosts), TFTP, or DNS not switched off."""
    if forward_mode(netroot) not in VIRTUAL_MODES:
        return False
    dns = netroot.find("dns")
    if dns is None or dns.get("enable") != "no":
        return True
    for ip in netroot.iterfind("ip"):
        if ip.find("tftp") is not None:
            return True
        dhcp = ip.find("dhcp")
        if dhcp is not None and (dhcp.find("range") is not None or dhcp.find("host") is not None):
            return True
    return False


def needs_firewall(netroot) -> bool:
    """libvirt adds firewall rules for isolated, NAT and routed networks
    (not for 'open' or host-bridge/macvtap/hostdev modes)."""
    return forward_mode(netroot) in (None, "nat", "route")


def _network_actions(facts, names: list[str], missing: list[str]) -> tuple[list[Action], list[str]]:
    """Actions that define (the default, from the packaged template), start and
    autostart `names`; notes for what cannot be done automatically."""
    actions: list[Action] = []
    notes: list[str] = []
    for name in names:
        if name in missing:
            if name != DEFAULT_NETWORK:
                notes.append(f"network {name} is not defined and virtdoctor does not know its configuration: "
                             f"define it (virsh net-define FILE) or point the NIC at another network")
                continue
            template = facts.read_text(DEFAULT_TEMPLATE)
            if template is None:
                notes.append(f"{DEFAULT_TEMPLATE} is missing (Debian: package libvirt-daemon-config-network); "
                             f"write a network definition for 'default' by hand")
                continue
            actions.append(DefineNetwork(name, template, DEFAULT_TEMPLATE))
        actions.append(StartNetwork(name, autostart=True))
    return actions, notes


# -- default-network-inactive (host) --------------------------------------------------
@check("default-network-inactive", scope="host", area="network", severity="error",
       title="Networks used by domains (and 'default') are defined, active and autostarted",
       needs=("libvirt-installed", "libvirt"), plans=True)
def default_network_inactive(facts):
    """Looks at every network a defined domain's <interface type='network'>
    names, plus the 'default' network virt-install uses: defined, active,
    autostart.
    Why: guests on a missing or stopped network fail to start with "Network
    not found: no network with matching name 'default'" or "Requested operation
    is not valid: network 'default' is not active"; without autostart the
    network is down after the next host boot.
    Fix safety: safe; starts (and autostarts) the networks, defines 'default'
    from /usr/share/libvirt/networks/default.xml when it is missing."""
    nets = {n.name: n for n in facts.libvirt.networks()}
    users = network_users(facts)
    wanted = list(users)
    if DEFAULT_NETWORK not in wanted:
        wanted.append(DEFAULT_NETWORK)
    missing, inactive, no_autostart, problems = [], [], [], []
    severity = Severity.WARNING
    for name in wanted:
        used_by = users.get(name, [])
        who = f" (used by {', '.join(used_by)})" if used_by else " (virt-install's default)"
        net = nets.get(name)
        if net is None:
            missing.append(name)
            problems.append(f"network '{name}' is not defined{who}: \"Network not found: no network with "
                            f"matching name '{name}'\"")
            if used_by:
                severity = Severity.ERROR
            continue
        if not net.active:
            inactive.append(name)
            problems.append(f"network '{name}' is not active{who}: \"network '{name}' is not active\"")
            if used_by:
                severity = Severity.ERROR
        if net.persistent and not net.autostart:
            no_autostart.append(name)
            if net.active:
                problems.append(f"network '{name}' is active but not autostarted{who}: down after a host reboot")
    evidence = {"missing": missing, "inactive": inactive, "no_autostart": no_autostart,
                "used_by": users, "networks": {n: {"active": i.active, "autostart": i.autostart,
                                                   "persistent": i.persistent} for n, i in nets.items()}}
    if problems:
        return Fail("; ".join(problems), evidence, severity=severity,
                    plan=start_networks(facts, missing, inactive, no_autostart))
    return Pass(f"networks active and autostarted: {', '.join(wanted)}", evidence)


def start_networks(facts, missing: list[str], inactive: list[str], no_autostart: list[str]):
    names = []
    for n in (*missing, *inactive, *no_autostart):
        if n not in names:
            names.append(n)
    if not names:
        return None
    actions, notes = _network_actions(facts, names, missing)
    if notes:  # something stays broken: the re-check would fail and roll back the rest
        return plan(f"Start and autostart network(s) {', '.join(names)}", Auto.MANUAL, *actions, notes=notes)
    return plan(f"Start and autostart network(s) {', '.join(names)}", Auto.SAFE, *actions)


# -- default-network-inactive (domain) -----------------------------------------------------
@check("default-network-inactive", scope="domain", area="network", severity="error",
       title="The domain's networks exist and are active", needs=("libvirt",), plans=True)
def domain_networks_inactive(facts, dom):
    """Looks at the networks the domain's <interface type='network'> NICs name:
    defined and active on this connection.
    Why: else the start fails with "Network not found: no network with
    matching name 'default'" or "Requested operation is not valid: network
    'default' is not active".
    Fix safety: safe; starts and autostarts the network (defines 'default'
    from the packaged template when it is missing); the domain is unchanged."""
    wanted = interface_networks(dom.root)
    if not wanted:
        return Pass("no <interface type='network'>")
    nets = {n.name: n for n in facts.libvirt.networks()}
    missing = [n for n in wanted if n not in nets]
    inactive = [n for n in wanted if n in nets and not nets[n].active]
    evidence = {"networks": wanted, "missing": missing, "inactive": inactive}
    if missing:
        return Fail(f"Network not found: no network with matching name '{missing[0]}'"
                    + (f" (also: {', '.join(missing[1:] + inactive)})" if len(missing) > 1 or inactive else ""),
                    evidence, plan=start_domain_networks(facts, dom, missing, inactive))
    if inactive:
        return Fail(f"Requested operation is not valid: network '{inactive[0]}' is not active"
                    + (f" (also: {', '.join(inactive[1:])})" if inactive[1:] else ""), evidence,
                    plan=start_domain_networks(facts, dom, missing, inactive))
    return Pass(f"network(s) {', '.join(wanted)} defined and active", evidence)


def start_domain_networks(facts, dom, missing: list[str], inactive: list[str]):
    names = [*missing, *inactive]
    actions, notes = _network_actions(facts, names, missing)
    auto = Auto.MANUAL if notes else Auto.SAFE
    return plan(f"Start and autostart network(s) {', '.join(names)} for {dom.label}", auto, *actions, notes=notes)


# -- dnsmasq ---------------------------------------------------------------------------------
def _networks_or_none(facts):
    try:
        return facts.libvirt.networks()
    except FactUnavailable:
        return None


def _install_command(facts, packages: list[str]) -> list[str]:
    for tool, argv in (("apt-get", ["apt-get", "install", "-y"]), ("dnf", ["dnf", "install", "-y"]),
                       ("yum", ["yum", "install", "-y"]), ("zypper", ["zypper", "install", "-y"])):
        if facts.which(tool):
            return argv + packages
    return ["apt-get", "install", "-y", *packages]


@check("dnsmasq-missing", scope="host", area="network", severity="error",
       title="dnsmasq is installed for libvirt's NAT/isolated networks", needs=("libvirt-installed",), plans=True)
def dnsmasq_missing(facts):
    """Looks for the dnsmasq binary on the daemon's search path and at which
    defined networks need it (DHCP, TFTP or DNS on a libvirt-managed bridge).
    Why: starting such a network fails with "Unable to find 'dnsmasq' binary
    in $PATH: No such file or directory", so its guests cannot start either."""
    path = facts.which("dnsmasq")
    nets = _networks_or_none(facts)
    needing = []
    for n in nets or ():
        try:
            if needs_dnsmasq(_xml(n.xml)):
                needing.append(n.name)
        except DomainXMLError:
            continue
    evidence = {"dnsmasq": path, "networks_needing_dnsmasq": needing,
                "networks_known": nets is not None}
    if path:
        return Pass(f"dnsmasq is {path}", evidence)
    err = "\"Unable to find 'dnsmasq' binary in $PATH: No such file or directory\""
    fix = install_dnsmasq(facts)
    if nets is None:
        return Fail(f"dnsmasq is not installed: NAT and isolated networks fail to start with {err}", evidence,
                    plan=fix)
    if needing:
        return Fail(f"dnsmasq is not installed and network(s) {', '.join(needing)} need it: they fail to "
                    f"start with {err}", evidence, plan=fix)
    return Warn(f"dnsmasq is not installed; no defined network needs it now, but a NAT network "
                f"(like 'default') would fail to start with {err}", evidence, plan=fix)


def install_dnsmasq(facts):
    return plan("Install dnsmasq (Debian/Ubuntu: dnsmasq-base)", Auto.MANUAL,
                RunCommand(_install_command(facts, ["dnsmasq-base"] if facts.which("apt-get") else ["dnsmasq"])),
                notes=["then start the networks: virsh net-start NAME"])


# -- firewall binaries -------------------------------------------------------------------------
def firewall_backend(facts) -> tuple[str | None, str]:
    """(backend, where it came from): network.conf `firewall_backend` (libvirt
    >= 10.4), else None: libvirt 9.0 uses iptables/ip6tables/ebtables."""
    try:
        conf = facts.conf(NETWORK_CONF)
    except FactUnavailable:
        conf = None
    except Exception as exc:  # syntax error: libvirt refuses to start the network driver too
        raise FactUnavailable(f"{NETWORK_CONF} cannot be parsed: {exc}") from exc
    if conf is not None and conf.get("firewall_backend") is not None:
        return str(conf.get("firewall_backend")), f"firewall_backend in {NETWORK_CONF}"
    return None, "libvirt 9.0 default (no firewall_backend setting)"


def _find_tool(facts, name: str) -> tuple[str | None, str | None]:
    """(path libvirt runs, path found elsewhere on PATH)."""
    for d in FIREWALL_DIRS:
        found = facts.which(f"{d}/{name}")
        if found:
            return found, None
    return None, facts.which(name)


def _parsed_definitions(facts):
    """(networks, domains) as lists of (name, parsed XML root), unparsable XML
    left out; None when libvirt is unreachable."""
    try:
        nets = facts.libvirt.networks()
        infos = facts.libvirt.domains()
    except FactUnavailable:
        return None

    def parsed(items):
        out = []
        for item in items:
            try:
                out.append((item.name, _xml(item.xml)))
            except DomainXMLError:
                continue
        return out

    return parsed(nets), parsed(infos)


def _tool_users(facts, backend) -> dict[str, list[str]] | None:
    """tool -> "network:N"/"domain:D" that need it; None when libvirt is unreachable.
    Measured on libvirt 9.0: a NAT network's start runs /usr/sbin/iptables;
    ip6tables only for networks with IPv6; ebtables only for nwfilter
    (<filterref> on a domain's NIC); the nftables backend runs nft for all."""
    defs = _parsed_definitions(facts)
    if defs is None:
        return None
    nets, doms = defs
    users: dict[str, list[str]] = {}
    for name, root in nets:
        if not needs_firewall(root):
            continue
        v6 = any(ip.get("family") == "ipv6" or ":" in (ip.get("address") or "") for ip in root.iterfind("ip"))
        if backend == "nftables":
            users.setdefault("nft", []).append(f"network:{name}")
            continue
        v4 = any(ip.get("family") in (None, "ipv4") and ":" not in (ip.get("address") or "")
                 for ip in root.iterfind("ip")) or not v6
        if v4:
            users.setdefault("iptables", []).append(f"network:{name}")
        if v6 or root.get("ipv6") == "yes":
            users.setdefault("ip6tables", []).append(f"network:{name}")
    for name, root in doms:
        if root.find("devices/interface/filterref") is not None:
            users.setdefault("ebtables" if backend != "nftables" else "nft", []).append(f"domain:{name}")
            users.setdefault("iptables", []).append(f"domain:{name}")
    return users


@check("firewall-ebtables-missing", scope="host", area="network", severity="error",
       title="The firewall tools libvirt's networks need are installed", needs=("libvirt-installed",), plans=True)
def firewall_ebtables_missing(facts):
    """Looks at the firewall backend (network.conf `firewall_backend` where
    libvirt has it, else libvirt 9.0's iptables/ip6tables/ebtables) and whether
    its binaries exist where libvirt runs them (/usr/sbin), following symlinks
    (a dangling `alternatives` link counts as missing), against what the
    defined networks (NAT/isolated/routed, IPv4/IPv6) and nwfilter users need.
    Why: older libvirt refused to start its firewall with "direct firewall
    backend requested, but /sbin/ebtables is not available"; libvirt 9.0 fails
    the network start with "internal error: Failed to apply firewall rules
    /usr/sbin/iptables -w ... cannot execute binary /usr/sbin/iptables: No such
    file or directory"."""
    backend, source = firewall_backend(facts)
    tools = FIREWALL_TOOLS.get(backend)
    if tools is None:
        return Fail(f"unknown firewall_backend {backend!r} in {NETWORK_CONF} (libvirt knows iptables and "
                    f"nftables)", {"backend": backend})
    found, missing, elsewhere = {}, [], {}
    for t in tools:
        path, other = _find_tool(facts, t)
        found[t] = path
        if path is None:
            missing.append(t)
            if other:
                elsewhere[t] = other
    users = _tool_users(facts, backend)
    evidence = {"backend": backend or "iptables (libvirt 9.0)", "source": source, "tools": found,
                "missing": missing, "found_elsewhere": elsewhere, "needed_by": users}
    if not missing:
        return Pass(f"{', '.join(found[t] for t in tools)} present ({source})", evidence)
    fix = install_firewall_tools(facts, missing)
    firewalld = evidence["firewalld_running"] = bool(facts.process_named("firewalld"))  # a process scan
    where = "".join(f"; {t} is at {p}, but libvirt runs {FIREWALL_DIRS[0]}/{t}" for t, p in elsewhere.items())
    text = f"{', '.join(missing)} missing ({source}){where}"
    needed = {t: users[t] for t in missing if users and users.get(t)}
    if users is None:
        # cannot see the networks: judge by what a NAT network and nwfilter need
        needed = {t: ["NAT and isolated networks"] for t in missing if t in ("iptables", "nft")}
    if firewalld and not needed.get("ebtables"):
        return Warn(f"{text}; firewalld runs, so libvirt passes its network rules through firewalld, but "
                    f"the nwfilter driver still runs the tools itself", evidence, plan=fix)
    if not needed:
        return Warn(f"{text}: nothing defined needs {'it' if len(missing) == 1 else 'them'} now, but "
                    + ("a NAT or isolated network would fail to start" if set(missing) & {"iptables", "nft"}
                       else "IPv6 networks (ip6tables) and <filterref> network filters (ebtables) would fail"),
                    evidence, plan=fix)
    parts = []
    for t, who in needed.items():
        err = (f"\"Failed to apply firewall rules {FIREWALL_DIRS[0]}/{t} ...: cannot execute binary "
               f"{FIREWALL_DIRS[0]}/{t}: No such file or directory\"")
        parts.append(f"{', '.join(who)} cannot start without {t}: {err}")
    return Fail(f"{text}: " + "; ".join(parts), evidence, plan=fix)


def install_firewall_tools(facts, missing: list[str]):
    pkgs = sorted({FIREWALL_PACKAGES.get(t, t) for t in missing})
    if not pkgs:
        return None
    return plan(f"Install {', '.join(pkgs)}", Auto.MANUAL, RunCommand(_install_command(facts, pkgs)),
                notes=["restart the libvirt daemon afterwards so the network driver sets up its chains"])


# -- bonds under bridges ------------------------------------------------------------------------
def _domain_links(facts):
    """Links for a domain check: under --offline (preflight of XML for another
    host) domain checks consult only the XML, so this one skips."""
    if facts.offline:
        raise FactUnavailable("--offline: this host's network links are not consulted")
    return _links(facts)


def _links(facts):
    if not facts.is_dir("/sys/class/net"):
        raise FactUnavailable("no /sys/class/net here (no sysfs in this root or container): "
                              "cannot see network links")
    return facts.links


def _lower_devices(facts, name: str) -> list[str]:
    """A stacked device's lower devices (a VLAN on a bond: lower_bond0)."""
    try:
        return [e[len("lower_"):] for e in facts.listdir(f"/sys/class/net/{name}") if e.startswith("lower_")]
    except FactUnavailable:
        return []


def bridge_users(facts) -> dict[str, list[str]] | None:
    """bridge name -> "domain:NAME"/"network:NAME" that plug into it; None when
    libvirt is unreachable."""
    defs = _parsed_definitions(facts)
    if defs is None:
        return None
    nets, doms = defs
    users: dict[str, list[str]] = {}
    for name, root in nets:
        br = root.find("bridge")
        if br is not None and br.get("name"):
            users.setdefault(br.get("name"), []).append(f"network:{name}")
    for name, root in doms:
        for iface in root.iterfind("devices/interface"):
            src = iface.find("source")
            if iface.get("type") == "bridge" and src is not None and src.get("bridge"):
                users.setdefault(src.get("bridge"), []).append(f"domain:{name}")
    return users


@check("bond-mode-unsuitable", scope="host", area="network", severity="warning",
       title="Bonds under VM bridges use a mode that works with bridging", plans=True)
def bond_mode_unsuitable(facts):
    """Looks at every bond (/sys/class/net/*/bonding/mode) that is a port of a
    Linux bridge, directly or through a VLAN on it, and which domains or
    networks use that bridge.
    Why: balance-alb (mode 6) and balance-tlb (mode 5) rewrite source MACs
    and balance by them; with guests behind a bridge their traffic flaps or
    is dropped. Use active-backup (1) or 802.3ad (4)."""
    links = _links(facts)
    bonds = {n: l for n, l in links.items() if l.is_bond}
    if not bonds:
        return Pass("no bonds", {"bonds": []})
    users = bridge_users(facts)
    bad, good, unknown = [], [], []
    evidence: dict = {"bonds": {}}
    for name, bond in bonds.items():
        mode = bond.bond_mode_name
        # the bridge above the bond: directly, or through a VLAN on it (bond0.100 -> br0)
        bridge = None
        if bond.master and links.get(bond.master) and links[bond.master].is_bridge:
            bridge = bond.master
        else:
            for upper, l in links.items():
                if name in _lower_devices(facts, upper) and l.master and links.get(l.master) \
                        and links[l.master].is_bridge:
                    bridge = l.master
                    break
        used = (users or {}).get(bridge, []) if bridge else []
        evidence["bonds"][name] = {"mode": bond.bond_mode, "slaves": list(bond.ports), "bridge": bridge,
                                   "bridge_users": used}
        if mode is None:
            unknown.append(name)
        elif mode in BAD_BOND_MODES and bridge:
            if users is None or used:
                bad.append((name, mode, bridge, used))
            else:
                good.append(f"{name} ({mode}) under {bridge}, which no domain or network uses")
        else:
            good.append(f"{name} ({mode}{', under ' + bridge if bridge else ''})")
    evidence["libvirt_known"] = users is not None
    if bad:
        parts = []
        for name, mode, bridge, used in bad:
            who = f"used by {', '.join(used)}" if used else "libvirt not reachable: users unknown"
            parts.append(f"bond {name} is in {mode} (mode {BAD_BOND_MODES[mode]}) under bridge {bridge} ({who})")
        return Fail("; ".join(parts) + ": guest traffic through it flaps; use active-backup (1) or "
                                        "802.3ad (4)", evidence, plan=change_bond_mode([b[0] for b in bad]))
    if unknown:
        return Skip(f"cannot read the bonding mode of {', '.join(unknown)} (/sys/class/net/*/bonding/mode)",
                    evidence)
    return Pass("; ".join(good), evidence)


def change_bond_mode(bonds: list[str]):
    return plan(f"Switch {', '.join(bonds)} to active-backup or 802.3ad in the host's network configuration",
                Auto.MANUAL,
                *[RunCommand(["ip", "link", "set", b, "type", "bond", "mode", "active-backup"]) for b in bonds],
                notes=["the mode can only change while the bond is down and has no slaves: change it in "
                       "/etc/network/interfaces (bond-mode active-backup or 802.3ad) or NetworkManager and "
                       "restart networking from a console, not over that link",
                       "802.3ad needs LACP on the switch ports"])


# -- domain: bridges and macvtap --------------------------------------------------------------------
@check("bridge-source-not-bridge", scope="domain", area="network", severity="error",
       title="<interface type='bridge'> names an existing Linux bridge", plans=True)
def bridge_source_not_bridge(facts, dom):
    """Looks at each <interface type='bridge'><source bridge='X'>: X exists in
    /sys/class/net and is a Linux bridge (or an Open vSwitch bridge with
    <virtualport type='openvswitch'/>).
    Why: a NIC, bond or veth there fails the start with "Unable to add bridge
    eth0 port vnet0: Operation not supported". A link that does not exist at all
    ("Cannot get interface MTU on 'br0': No such device") is bridge-missing's
    finding (checks/netconflict.py), so the two are told apart."""
    ifaces = [i for i in dom.root.iterfind("devices/interface") if i.get("type") == "bridge"]
    if not ifaces:
        return Pass("no <interface type='bridge'>")
    links = _domain_links(facts)
    bad, ok, absent, evidence = [], [], [], {"bridges": {}}
    not_bridges: list[str] = []
    for iface in ifaces:
        src = iface.find("source")
        name = src.get("bridge") if src is not None else None
        vport = iface.find("virtualport")
        ovs = vport is not None and vport.get("type") == "openvswitch"
        if not name:
            bad.append("an <interface type='bridge'> has no <source bridge=...>")
            continue
        link = links.get(name)
        evidence["bridges"][name] = {"exists": link is not None, "kind": link.kind if link else None,
                                     "master": link.master if link else None, "openvswitch": ovs}
        if link is None:
            absent.append(name)  # no such link at all: bridge-missing's finding, not this one
        elif link.is_bridge:
            ok.append(name)
        elif ovs or link.master == "ovs-system":
            ok.append(f"{name} (Open vSwitch)")
        else:
            not_bridges.append(name)
            what = {"bond": "a bond", "veth": "a veth", "physical": "a physical NIC"}.get(link.kind, f"a {link.kind} link")
            bad.append(f"{name} is {what}, not a bridge: \"Unable to add bridge {name} port vnet0: "
                       f"Operation not supported\"")
    if bad:
        return Fail("; ".join(bad), evidence, plan=make_bridge(not_bridges))
    if absent:
        return Pass(f"no link named {', '.join(absent)} (bridge-missing reports it)"
                    + (f"; bridge(s) {', '.join(ok)} exist" if ok else ""), evidence)
    return Pass(f"bridge(s) {', '.join(ok)} exist", evidence)


def make_bridge(names: list[str]):
    if not names:
        return plan("Create the bridge the domain names, or point the NIC at an existing one", Auto.MANUAL,
                    notes=["ip link add NAME type bridge && ip link set NAME up (persist it in the host's "
                           "network configuration)"])
    nic = names[0]
    return plan(f"Create a bridge over {nic}, move {nic}'s address to it, and use the bridge", Auto.MANUAL,
                RunCommand(["ip", "link", "add", "br0", "type", "bridge"]),
                RunCommand(["ip", "link", "set", nic, "master", "br0"]),
                RunCommand(["ip", "link", "set", "br0", "up"]),
                notes=[f"{nic}'s IP address must move to br0: do it from a console, in the host's network "
                       f"configuration (Debian: /etc/network/interfaces, bridge_ports {nic})",
                       "then set <source bridge='br0'/> in the domain (virsh edit)"])


def _top_device(links, name: str) -> tuple[str, list[str]]:
    """Follow masters upward from `name`: (topmost device, chain)."""
    chain = [name]
    cur = links.get(name)
    while cur is not None and cur.master and cur.master not in chain and cur.master in links:
        chain.append(cur.master)
        cur = links[cur.master]
    return chain[-1], chain


@check("macvtap-source-enslaved", scope="domain", area="network", severity="error",
       title="<interface type='direct'> sits on a device that is free for macvtap", plans=True)
def macvtap_source_enslaved(facts, dom):
    """Looks at each <interface type='direct'><source dev='X'>: X exists and
    is not enslaved to a bond or bridge (/sys/class/net/X/master).
    Why: the kernel refuses a macvtap on a device that already has an rx
    handler, and the start fails with "error creating macvtap interface
    macvtap0@eth0 (52:54:00:...): Device or resource busy".
    Fix safety: unsafe (the NIC's configuration changes): use the bond, or
    the bridge as <interface type='bridge'>, keeping MAC and model."""
    ifaces = [i for i in dom.root.iterfind("devices/interface") if i.get("type") == "direct"]
    if not ifaces:
        return Pass("no <interface type='direct'>")
    links = _domain_links(facts)
    bad, ok, evidence = [], [], {"devices": {}}
    for iface in ifaces:
        src = iface.find("source")
        dev = src.get("dev") if src is not None else None
        mac = iface.find("mac")
        mac_text = mac.get("address") if mac is not None else "52:54:00:..."
        if not dev:
            bad.append("an <interface type='direct'> has no <source dev=...>")
            continue
        link = links.get(dev)
        if link is None:
            evidence["devices"][dev] = {"exists": False}
            bad.append(f"{dev} does not exist: \"Unable to get index for interface {dev}: No such device\"")
            continue
        top, chain = _top_device(links, dev)
        evidence["devices"][dev] = {"exists": True, "master": link.master, "chain": chain,
                                    "top": top, "top_kind": links[top].kind if top in links else None,
                                    "mode": src.get("mode") or "vepa"}
        if link.master:
            m = links.get(link.master)
            kind = "bond" if m is not None and m.is_bond else "bridge" if m is not None and m.is_bridge \
                else "master device"
            bad.append(f"{dev} is enslaved to {kind} {link.master}: \"error creating macvtap interface "
                       f"macvtap0@{dev} ({mac_text}): Device or resource busy\"")
        else:
            ok.append(dev)
    if bad:
        return Fail("; ".join(bad), evidence, plan=use_the_master(facts, dom, links))
    return Pass(f"macvtap lower device(s) {', '.join(ok)} are free", evidence)


def use_the_master(facts, dom, links):
    """Move each enslaved direct NIC onto the device that owns it (the bridge as
    <interface type='bridge'>, else the bond), through redefine_plan (its guard:
    transient domains and XML files get advice or a file edit, never a define)."""
    if not dom.name:
        return None

    def edit(d):
        changes = []
        for iface in d.root.iterfind("devices/interface"):
            if iface.get("type") != "direct":
                continue
            src = iface.find("source")
            dev = src.get("dev") if src is not None else None
            link = links.get(dev) if dev else None
            if link is None or not link.master:
                continue
            top, _chain = _top_device(links, dev)
            top_link = links.get(top)
            if top_link is None:
                continue
            if top_link.is_bridge:
                iface.set("type", "bridge")
                for attr in list(src.attrib):
                    del src.attrib[attr]
                src.set("bridge", top)
                changes.append(f"{dev} -> <interface type='bridge'><source bridge='{top}'/>")
            else:
                src.set("dev", top)
                changes.append(f"{dev} -> <source dev='{top}'/> (the {top_link.kind})")
        return f"Attach {dom.label}'s NIC to the device that owns it: {'; '.join(changes)}" if changes else None

    return redefine_plan(dom, edit, auto=Auto.UNSAFE, notes=["MAC address and NIC model stay the same"])


@hookimpl
def virtdoctor_checks():
    return [default_network_inactive, dnsmasq_missing, firewall_ebtables_missing, bond_mode_unsuitable,
            domain_networks_inactive, bridge_source_not_bridge, macvtap_source_enslaved]
