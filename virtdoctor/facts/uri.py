"""Which libvirt URI a client would use, resolved as libvirt does
(src/libvirt.c virConnectOpenInternal and virConfGetValue of uri_aliases)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ParsedUri:
    uri: str
    driver: str  # "qemu", "test", "lxc"...
    transport: str  # "" (default: unix when no host, tls when a host), "ssh", "tcp", "tls", "unix"
    host: str
    path: str  # "/system", "/session", "/embed"...

    @property
    def is_remote(self) -> bool:
        return bool(self.host) or self.transport in ("ssh", "tcp", "tls", "libssh", "libssh2")

    @property
    def uses_tls(self) -> bool:
        """`qemu://host/system` (a host and no transport) means TLS."""
        return self.transport == "tls" or (self.transport == "" and bool(self.host))


def parse_uri(uri: str) -> ParsedUri:
    parts = urlsplit(uri)
    scheme = parts.scheme
    driver, _, transport = scheme.partition("+")
    return ParsedUri(uri, driver, transport, parts.hostname or "", parts.path or "")


def client_conf_path(euid: int) -> str:
    """The libvirt.conf a client reads (virConfLoadConfig): /etc/libvirt/libvirt.conf
    as root, $XDG_CONFIG_HOME/libvirt/libvirt.conf otherwise."""
    if euid == 0:
        return "/etc/libvirt/libvirt.conf"
    cfg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(cfg, "libvirt", "libvirt.conf")


def aliases(facts, euid: int) -> dict[str, str]:
    """uri_aliases of the client's libvirt.conf (see client_conf_path)."""
    value = facts.conf_value(client_conf_path(euid), "uri_aliases", []) or []
    out = {}
    for item in value if isinstance(value, list) else [value]:
        name, sep, target = str(item).partition("=")
        if sep:
            out[name.strip()] = target.strip()
    return out


def default_uri_from_conf(facts, euid: int) -> str | None:
    """uri_default of the same file: a normal user's own libvirt.conf counts too."""
    return facts.conf_value(client_conf_path(euid), "uri_default")


def resolve_uri(explicit: str | None, *, env, euid: int, facts) -> str:
    uri = explicit or env.get("LIBVIRT_DEFAULT_URI") or default_uri_from_conf(facts, euid) \
        or ("qemu:///system" if euid == 0 else "qemu:///session")
    return aliases(facts, euid).get(uri, uri)
