"""TLS facts: where libvirt looks for its X.509 files, and what they hold.

Paths follow libvirt 9.0.0 src/rpc/virnettlscontext.c (virNetTLSContextLocateCredentials):
the system locations below /etc/pki, the daemon's `ca_file`/`cert_file`/`key_file`, and for
a non-root client `~/.pki/libvirt/` first, falling back file by file to the system ones.
Certificates and keys are parsed with `cryptography`; every problem (absent, dangling
symlink, unreadable, not PEM, not a certificate) is data in the result, never an exception.
All I/O goes through HostFacts, so `--root` and unit tests see the fake tree.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from virtdoctor.model import FactUnavailable

CA_FILE = "/etc/pki/CA/cacert.pem"
CA_KEY_FILE = "/etc/pki/CA/private/cakey.pem"  # where virtdoctor's fix keeps the CA key (libvirt never reads it)
CRL_FILE = "/etc/pki/CA/cacrl.pem"
SERVER_CERT = "/etc/pki/libvirt/servercert.pem"
SERVER_KEY = "/etc/pki/libvirt/private/serverkey.pem"
CLIENT_CERT = "/etc/pki/libvirt/clientcert.pem"
CLIENT_KEY = "/etc/pki/libvirt/private/clientkey.pem"
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
VIRTPROXYD_CONF = "/etc/libvirt/virtproxyd.conf"


@dataclass(frozen=True)
class TlsPaths:
    side: str  # "server" or "client"
    ca: str
    cert: str
    key: str
    source: str  # where the paths came from


@dataclass
class PemFile:
    """One certificate or key file as libvirt would load it."""

    path: str
    state: str  # ok | missing | dangling | unreadable | not-pem | invalid | directory
    detail: str = ""
    target: str | None = None  # symlink target, when the path is a link
    obj: Any = None  # cryptography Certificate or private key

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def present(self) -> bool:
        """Something libvirt can open is there (even if it is not a valid PEM)."""
        return self.state not in ("missing", "dangling", "unreadable", "directory")


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    common_names: tuple[str, ...]
    is_ca: bool
    serial: int

    def names(self) -> tuple[str, ...]:
        return self.dns_names + self.ip_addresses + self.common_names


def _link_target(facts, path: str) -> str | None:
    real = facts.path(path)
    try:
        return os.readlink(real) if os.path.islink(real) else None
    except OSError:
        return None


def _read(facts, path: str) -> tuple[PemFile, bytes | None]:
    target = _link_target(facts, path)
    if not facts.exists(path):
        return PemFile(path, "missing", "No such file or directory"), None
    if facts.stat(path) is None:
        return PemFile(path, "dangling", f"a symlink to {target}, which does not exist", target), None
    if facts.is_dir(path):
        return PemFile(path, "directory", "is a directory", target), None
    try:
        data = facts.read_bytes(path, limit=1 << 20)
    except FactUnavailable as exc:
        return PemFile(path, "unreadable", str(exc), target), None
    if data is None:
        return PemFile(path, "missing", "No such file or directory", target), None
    return PemFile(path, "ok", "", target), data


def load_cert(facts, path: str) -> PemFile:
    """The first certificate of a PEM file (GnuTLS reads the file as PEM)."""
    from cryptography import x509

    pem, data = _read(facts, path)
    if data is None:
        return pem
    if b"-----BEGIN CERTIFICATE-----" not in data:
        pem.state = "not-pem"
        pem.detail = "is not a PEM certificate (no '-----BEGIN CERTIFICATE-----' block)" if data.strip() \
            else "is empty"
        return pem
    try:
        pem.obj = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        pem.state = "invalid"
        pem.detail = f"holds a PEM block that is not a valid certificate ({exc})"
    return pem


def load_key(facts, path: str) -> PemFile:
    from cryptography.hazmat.primitives import serialization

    pem, data = _read(facts, path)
    if data is None:
        return pem
    if b"PRIVATE KEY-----" not in data:
        pem.state = "not-pem"
        pem.detail = "is not a PEM private key" if data.strip() else "is empty"
        return pem
    try:
        pem.obj = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        pem.state = "invalid"
        pem.detail = f"is not a usable unencrypted private key ({exc})"
    return pem


def cert_info(cert) -> CertInfo:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    is_ca = False
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        pass
    cns = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return CertInfo(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                    cert.not_valid_before_utc, cert.not_valid_after_utc, dns, ips, cns, is_ca,
                    cert.serial_number)


def signed_by(cert, ca) -> str | None:
    """None when `ca` issued `cert` (issuer name and signature), else why not."""
    try:
        cert.verify_directly_issued_by(ca)
        return None
    except ValueError as exc:
        return f"issuer {cert.issuer.rfc4514_string()!r} is not the CA {ca.subject.rfc4514_string()!r} ({exc})"
    except Exception as exc:  # InvalidSignature, TypeError for unsupported key types
        return f"the signature does not verify with the CA's key ({type(exc).__name__})"


def key_matches(cert, key) -> bool:
    from cryptography.hazmat.primitives import serialization

    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def name_matches(info: CertInfo, host: str) -> bool:
    """GnuTLS's gnutls_x509_crt_check_hostname in short: an IP must be an IP SAN; a name
    matches a DNS SAN (one leading '*.' label wildcard), or the CN when there are no DNS SANs."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return any(ipaddress.ip_address(a) == ip for a in info.ip_addresses)
    names = info.dns_names or info.common_names
    for n in names:
        n = n.lower().rstrip(".")
        if n == host:
            return True
        if n.startswith("*.") and "." in host and host.split(".", 1)[1] == n[2:]:
            return True
    return False


# -- where the files are ------------------------------------------------------------------
def alive(facts, name: str) -> list:
    """Processes named `name`, without zombies (a daemon that exited and is not reaped yet)."""
    return facts.running(name)


def daemon_conf_path(facts) -> str:
    """The config file of the daemon that would serve TLS: the config file in effect
    (`-f/--config` of the running or configured command line) of a running libvirtd (or
    virtproxyd), else libvirtd's (virtproxyd's when only the modular daemons are installed)."""
    layout = facts.daemon
    libvirtd, proxy = layout.daemons["libvirtd"], layout.daemons["virtproxyd"]
    for d in (libvirtd, proxy):
        if d.running:
            return d.conf
    if libvirtd.installed is None and proxy.installed is not None:
        return proxy.conf
    return libvirtd.conf


def server_paths(facts) -> TlsPaths:
    conf = daemon_conf_path(facts)
    ca = facts.conf_value(conf, "ca_file")
    cert = facts.conf_value(conf, "cert_file")
    key = facts.conf_value(conf, "key_file")
    src = f"{conf} (ca_file/cert_file/key_file)" if (ca or cert or key) else "libvirt's default paths"
    return TlsPaths("server", str(ca or CA_FILE), str(cert or SERVER_CERT), str(key or SERVER_KEY), src)


def client_paths(facts, uri: str | None = None) -> TlsPaths:
    """Client side: `?pkipath=DIR` of the URI, else per-user ~/.pki/libvirt for a non-root
    client (each file falling back to the system one when absent), else /etc/pki."""
    from urllib.parse import parse_qs, urlsplit

    if uri:
        q = parse_qs(urlsplit(uri).query)
        if q.get("pkipath"):
            d = q["pkipath"][0].rstrip("/")
            return TlsPaths("client", f"{d}/cacert.pem", f"{d}/clientcert.pem", f"{d}/clientkey.pem",
                            f"pkipath={d} in the URI")
    if facts.euid != 0:
        acct = facts.account(facts.euid)
        if acct is not None:
            d = f"{acct.home.rstrip('/')}/.pki/libvirt"
            pick = {}
            for key, user_file, system_file in (("ca", f"{d}/cacert.pem", CA_FILE),
                                                ("cert", f"{d}/clientcert.pem", CLIENT_CERT),
                                                ("key", f"{d}/clientkey.pem", CLIENT_KEY)):
                pick[key] = user_file if facts.exists(user_file) else system_file
            return TlsPaths("client", pick["ca"], pick["cert"], pick["key"],
                            f"{d} (per-user), falling back to /etc/pki")
    return TlsPaths("client", CA_FILE, CLIENT_CERT, CLIENT_KEY, "libvirt's default paths")


# -- is TLS in use -------------------------------------------------------------------------
@dataclass
class TlsUse:
    server: bool = False
    client: bool = False
    reasons: list[str] = field(default_factory=list)
    local_uri_host: str | None = None  # the URI names this host: its server side matters too

    @property
    def any(self) -> bool:
        return self.server or self.client


def local_names(facts) -> set[str]:
    names = {"localhost", "localhost.localdomain", "127.0.0.1", "::1"}
    for n in host_names(facts):
        names.add(n.lower())
    return names


def host_names(facts) -> list[str]:
    """This host's short name and FQDN (from /etc/hostname and /etc/hosts below the root)."""
    try:
        text = facts.read_text("/etc/hostname") or ""
    except FactUnavailable:
        text = ""
    short = text.strip().split()[0] if text.strip() else ""
    if not short and facts.is_live:
        try:
            short = facts.run(["hostname"], timeout=2).stdout.strip()
        except FactUnavailable:
            short = ""
    out = [short] if short else []
    try:
        hosts = facts.read_text("/etc/hosts") or ""
    except FactUnavailable:
        hosts = ""
    for line in hosts.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and short and short in fields[1:]:
            for n in fields[1:]:
                if "." in n and n not in out and n.split(".", 1)[0] == short:
                    out.append(n)
    return out


def daemon_listens(facts) -> tuple[bool | None, str]:
    """(listening with --listen, how we know). None when no daemon process is visible."""
    for name in ("libvirtd",):
        procs = alive(facts, name)
        if procs:
            args = procs[0].cmdline
            on = any(a in ("-l", "--listen") or (a.startswith("-") and not a.startswith("--") and "l" in a[1:])
                     for a in args[1:])
            return on, f"{name} pid {procs[0].pid} runs {'with' if on else 'without'} --listen"
    if alive(facts, "virtproxyd"):
        return None, "virtproxyd runs: listening depends on its -tls/-tcp sockets"
    return None, "no libvirtd process"


def systemd_tls_socket(facts) -> str | None:
    for unit in ("libvirtd-tls.socket", "virtproxyd-tls.socket"):
        for d in ("/etc/systemd/system/sockets.target.wants", "/etc/systemd/system/libvirtd.service.wants",
                  "/etc/systemd/system/virtproxyd.service.wants"):
            if facts.exists(f"{d}/{unit}"):
                return f"{d}/{unit}"
    return None


def tls_use(facts) -> TlsUse:
    """Whether this host serves TLS (listen_tls with --listen, or a -tls.socket unit) and
    whether the client URI in use is a TLS one."""
    from virtdoctor.facts.uri import parse_uri

    use = TlsUse()
    conf = daemon_conf_path(facts)
    listening, how = daemon_listens(facts)
    listen_tls = facts.conf_value(conf, "listen_tls", 1)
    if listening and str(listen_tls) not in ("0", "False"):
        use.server = True
        use.reasons.append(f"{how} and listen_tls = {listen_tls} ({conf})")
    unit = systemd_tls_socket(facts)
    if unit:
        use.server = True
        use.reasons.append(f"the TLS socket unit is enabled ({unit})")
    try:
        uri = parse_uri(facts.resolved_uri)
    except Exception:
        uri = None
    if uri is not None and uri.uses_tls:
        use.client = True
        use.reasons.append(f"the URI {uri.uri} uses TLS" + ("" if uri.transport else " (a host and no transport)"))
        if uri.host.lower() in local_names(facts):
            use.local_uri_host = uri.host
            use.server = True
            use.reasons.append(f"{uri.host} is this host: its daemon must serve TLS")
    return use


def resolved_uri(facts) -> str | None:
    try:
        return facts.resolved_uri
    except Exception:
        return None


# -- generating a CA and certificates (for the fix) ----------------------------------------
@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _builder(subject, issuer, public_key, days: int, now: _dt.datetime):
    from cryptography import x509

    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=days)))


def make_ca(cn: str, days: int = 3650, now: _dt.datetime | None = None) -> tuple[Issued, Any, Any]:
    """A self-signed CA (like the wiki's certtool `ca`, `cert_signing_key`). Returns the PEMs
    and the (certificate, key) objects to sign with."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = now or _dt.datetime.now(_dt.timezone.utc)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "virtdoctor"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (_builder(name, name, key.public_key(), days, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(_cert_pem(cert), _key_pem(key)), cert, key


def issue(ca_cert, ca_key, cn: str, *, server: bool, names: list[str] = (), days: int = 3650,
          now: _dt.datetime | None = None) -> Issued:
    """A server (tls_www_server, SANs) or client (tls_www_client) certificate signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or _dt.datetime.now(_dt.timezone.utc)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "virtdoctor"),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (_builder(subject, ca_cert.subject, key.public_key(), days, now)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                      crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False))
    if names:
        sans: list = []
        for n in dict.fromkeys(names):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    return Issued(_cert_pem(cert), _key_pem(key))


def load_ca_for_signing(facts, ca_path: str, key_path: str = CA_KEY_FILE):
    """(ca certificate, ca key) when both exist and belong together, else None."""
    ca = load_cert(facts, ca_path)
    key = load_key(facts, key_path)
    if ca.ok and key.ok and key_matches(ca.obj, key.obj):
        return ca.obj, key.obj
    return None
