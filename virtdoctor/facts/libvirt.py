"""The libvirt connection as facts: opened lazily and read-only, every call with
a deadline (a hung daemon must not hang the doctor), capabilities and
domcapabilities parsed once per run.

`LiveLibvirt` talks to a real daemon through libvirt-python; `RecordedLibvirt`
serves recorded XML for unit tests. Both offer the same read methods.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from lxml import etree

from virtdoctor.model import FactUnavailable

# virDomainState
STATE_NAMES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shut down",
               5: "shut off", 6: "crashed", 7: "suspended (pmsuspended)"}

# virDomain*Reason, by state (include/libvirt/libvirt-domain.h)
STATE_REASONS = {
    1: ["unknown", "booted", "migrated", "restored", "from snapshot", "unpaused", "migration canceled",
        "save canceled", "woken up", "crashed", "post-copy", "post-copy failed"],
    2: ["unknown"],
    3: ["unknown", "paused by user", "migration", "save", "dump", "I/O error", "watchdog", "from snapshot",
        "shutting down", "snapshot", "API error", "starting up", "post-copy", "post-copy failed"],
    4: ["unknown", "user"],
    5: ["unknown", "shut down", "destroyed", "crashed", "migrated", "saved", "failed to start",
        "from snapshot", "daemon"],
    6: ["unknown", "panicked"],
    7: ["unknown"],
}


def reason_name(state: int, reason: int) -> str:
    names = STATE_REASONS.get(state, [])
    return names[reason] if 0 <= reason < len(names) else f"reason {reason}"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    xml: str  # inactive XML (what the next start uses)
    persistent: bool = True
    active: bool = False
    autostart: bool = False
    state: int = 5
    reason: int = 0
    id: int = -1
    live_xml: str | None = None

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, str(self.state))

    @property
    def reason_name(self) -> str:
        return reason_name(self.state, self.reason)


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    active: bool
    autostart: bool
    persistent: bool
    xml: str
    bridge: str | None = None


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse_xml(text: str | bytes) -> etree._Element:
    return etree.fromstring(text.encode() if isinstance(text, str) else text, _parser())


class _Base:
    uri: str

    def _domcaps_key(self, emulator, arch, machine, virttype):
        return (emulator, arch, machine, virttype)

    def capabilities(self) -> etree._Element:
        if self._caps is None:
            self._caps = parse_xml(self._capabilities_xml())
        return self._caps

    def domcapabilities(self, emulator: str | None = None, arch: str | None = None,
                        machine: str | None = None, virttype: str | None = None) -> etree._Element:
        key = (emulator, arch, machine, virttype)
        if key not in self._domcaps:
            self._domcaps[key] = parse_xml(self._domcapabilities_xml(*key))
        return self._domcaps[key]

    def domain(self, name: str) -> DomainInfo | None:
        return next((d for d in self.domains() if d.name == name), None)

    def network(self, name: str) -> NetworkInfo | None:
        return next((n for n in self.networks() if n.name == name), None)

    def host_arch(self) -> str:
        return self.capabilities().findtext("host/cpu/arch") or ""

    def guest_emulators(self) -> list[tuple[str, str]]:
        """(arch, emulator path) of every guest the capabilities offer."""
        out = []
        for arch in self.capabilities().iterfind("guest/arch"):
            emu = arch.findtext("emulator")
            if emu:
                out.append((arch.get("name", ""), emu))
        return out


class RecordedLibvirt(_Base):
    """Facts from recorded XML: for unit tests and offline analysis."""

    def __init__(self, uri: str = "qemu:///system", capabilities: str = "<capabilities/>",
                 domcapabilities: str | dict | None = None, domains: list[DomainInfo] | None = None,
                 networks: list[NetworkInfo] | None = None, error: str | None = None):
        self.uri = uri
        self._caps_xml = capabilities
        self._domcaps_src = domcapabilities
        self._domains = list(domains or [])
        self._networks = list(networks or [])
        self._error = error
        self._caps = None
        self._domcaps: dict = {}

    def connect_error(self) -> str | None:
        return self._error

    def _check(self):
        if self._error:
            raise FactUnavailable(self._error)

    def _capabilities_xml(self) -> str:
        self._check()
        return self._caps_xml

    def _domcapabilities_xml(self, emulator, arch, machine, virttype) -> str:
        self._check()
        src = self._domcaps_src
        if isinstance(src, dict):
            for k in ((emulator, arch, machine, virttype), arch, None):
                if k in src:
                    return src[k]
            raise FactUnavailable(f"no domain capabilities recorded for {arch or 'the default arch'}")
        if src is None:
            raise FactUnavailable("no domain capabilities recorded")
        return src

    def domains(self) -> list[DomainInfo]:
        self._check()
        return list(self._domains)

    def networks(self) -> list[NetworkInfo]:
        self._check()
        return list(self._networks)

    def versions(self) -> dict[str, str]:
        return {}


class LiveLibvirt(_Base):
    def __init__(self, uri: str, timeout: float = 5.0):
        self.uri = uri
        self.timeout = timeout
        self._conn = None
        self._rw_conn = None
        self._failure: str | None = None
        self._caps = None
        self._domcaps: dict = {}
        self._domain_cache: list[DomainInfo] | None = None
        self._network_cache: list[NetworkInfo] | None = None

    # -- plumbing -----------------------------------------------------------
    def _with_deadline(self, what: str, fn: Callable[[], Any]) -> Any:
        box: dict[str, Any] = {}

        def target():
            try:
                box["value"] = fn()
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc

        t = threading.Thread(target=target, name=f"virtdoctor-{what}", daemon=True)
        t.start()
        t.join(self.timeout)
        if t.is_alive():
            self._failure = (f"the libvirt daemon did not answer {what} within {self.timeout:g} s "
                             f"({self.uri})")
            raise FactUnavailable(self._failure)
        if "error" in box:
            exc = box["error"]
            mod = exc.__class__.__module__
            if exc.__class__.__name__ == "libvirtError" and mod.startswith("libvirt"):
                raise FactUnavailable(f"libvirt: {exc.get_error_message() or exc}") from exc
            raise exc
        return box.get("value")

    def _module(self):
        try:
            import libvirt  # noqa: PLC0415
        except ImportError as exc:
            raise FactUnavailable("libvirt-python is not installed (pip install libvirt-python)") from exc
        except Exception as exc:  # a broken binding (ABI mismatch...) is a skip, not a crash
            raise FactUnavailable(f"libvirt-python is broken: {exc}") from exc
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        return libvirt

    def connection(self):
        if self._failure:
            raise FactUnavailable(self._failure)
        if self._conn is None:
            libvirt = self._module()
            try:
                self._conn = self._with_deadline("virConnectOpenReadOnly",
                                                 lambda: libvirt.openReadOnly(self.uri))
            except FactUnavailable as exc:
                self._failure = str(exc)
                raise
        return self._conn

    def connect_error(self) -> str | None:
        """None when the connection works, else libvirt's own message."""
        try:
            self.connection()
            return None
        except FactUnavailable as exc:
            return str(exc)

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        conn = self.connection()
        return self._with_deadline(what, lambda: fn(conn))

    def call_rw(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """`call` on a read-write connection, for the few read-only questions libvirt 9.0 refuses
        on a read-only one (virConnectCompareHypervisorCPU, domcapabilities): opened once, as
        root it is allowed; for others libvirt says no and the check skips with that reason."""
        self.connection()
        if self._rw_conn is None:
            libvirt = self._module()
            self._rw_conn = self._with_deadline("virConnectOpen", lambda: libvirt.open(self.uri))
        conn = self._rw_conn
        return self._with_deadline(what, lambda: fn(conn))

    # -- reads ----------------------------------------------------------------
    def _capabilities_xml(self) -> str:
        return self.call("virConnectGetCapabilities", lambda c: c.getCapabilities())

    def _domcapabilities_xml(self, emulator, arch, machine, virttype) -> str:
        """libvirt 9.0 refuses this call on a read-only connection ("operation
        forbidden: read only access prevents virConnectGetDomainCapabilities"),
        although it changes nothing: then, and only for this call, a read-write
        connection is opened (as root it is allowed; for others libvirt says no
        and the checks that need it skip with that reason)."""
        call = lambda c: c.getDomainCapabilities(emulator, arch, machine, virttype, 0)  # noqa: E731
        try:
            return self.call("virConnectGetDomainCapabilities", call)
        except FactUnavailable as exc:
            if "read only access prevents" not in str(exc):
                raise
        if self._rw_conn is None:
            libvirt = self._module()
            self._rw_conn = self._with_deadline("virConnectOpen", lambda: libvirt.open(self.uri))
        conn = self._rw_conn
        return self._with_deadline("virConnectGetDomainCapabilities", lambda: call(conn))

    def domains(self) -> list[DomainInfo]:
        if self._domain_cache is None:
            libvirt = self._module()

            def read(conn):
                out = []
                for dom in conn.listAllDomains(0):
                    try:
                        state, reason = dom.state()
                        persistent = bool(dom.isPersistent())
                        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0
                        xml = dom.XMLDesc(flags)
                        active = bool(dom.isActive())
                        out.append(DomainInfo(
                            name=dom.name(), uuid=dom.UUIDString(), xml=xml, persistent=persistent,
                            active=active, autostart=bool(dom.autostart()) if persistent else False,
                            state=state, reason=reason, id=dom.ID() if active else -1,
                            live_xml=dom.XMLDesc(0) if active and persistent else None))
                    except libvirt.libvirtError:
                        continue  # undefined while we listed
                return out

            self._domain_cache = self.call("virConnectListAllDomains", read)
        return self._domain_cache

    def networks(self) -> list[NetworkInfo]:
        if self._network_cache is None:
            libvirt = self._module()

            def read(conn):
                out = []
                for net in conn.listAllNetworks(0):
                    try:
                        try:
                            bridge = net.bridgeName()
                        except libvirt.libvirtError:
                            bridge = None
                        out.append(NetworkInfo(net.name(), bool(net.isActive()), bool(net.autostart()),
                                               bool(net.isPersistent()), net.XMLDesc(0), bridge))
                    except libvirt.libvirtError:
                        continue
                return out

            self._network_cache = self.call("virConnectListAllNetworks", read)
        return self._network_cache

    def versions(self) -> dict[str, str]:
        def fmt(v: int) -> str:
            return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"

        return self.call("virConnectGetVersion", lambda c: {
            "libvirt": fmt(c.getLibVersion()), "hypervisor": fmt(c.getVersion())})


@dataclass
class Writable:
    """A read-write connection for the remedy engine (not for checks)."""

    uri: str
    timeout: float = 30.0
    _live: LiveLibvirt | None = field(default=None, repr=False)

    def open(self):
        live = LiveLibvirt(self.uri, self.timeout)
        libvirt = live._module()
        return live._with_deadline("virConnectOpen", lambda: libvirt.open(self.uri))


def start_domain(uri: str, name: str, timeout: float = 60.0) -> tuple[bool, str]:
    """One real start attempt (`virsh start NAME`) for `diagnose --start`:
    (True, "") when it started, else (False, libvirt's error message)."""
    live = LiveLibvirt(uri, timeout)
    libvirt = live._module()

    def attempt():
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                return True, "already running"
            try:
                dom.create()
                return True, ""
            except libvirt.libvirtError as exc:
                return False, exc.get_error_message() or str(exc)
        finally:
            conn.close()

    return live._with_deadline("virDomainCreate", attempt)
