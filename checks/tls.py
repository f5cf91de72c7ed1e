"""TLS: the CA, server and client certificates libvirt loads for `qemu://HOST/system`,
`qemu+tls://` and a daemon listening with listen_tls."""
from __future__ import annotations

import datetime as _dt

from virtdoctor.api import Auto, Fail, MakeDir, Pass, SetMode, Warn, WriteFile, check, hookimpl, plan
from virtdoctor.api import tlsfacts as T

_STATE_TEXT = {"missing": "No such file or directory", "dangling": "No such file or directory",
               "directory": "Is a directory"}


def _why(pem) -> str:
    return _STATE_TEXT.get(pem.state, pem.detail or pem.state)


def _missing(pem) -> bool:
    return not pem.present


def _not_in_use(use, side: str | None = None):
    what = {"server": "this host does not serve TLS", "client": "the URI in use is not a TLS URI",
            None: "TLS is not in use"}[side]
    return Pass(f"{what} (no listen_tls with --listen, no TLS socket unit, no TLS URI)",
                {"reasons": use.reasons})


def _pem_evidence(pem) -> dict:
    ev = {"path": pem.path, "state": pem.state}
    if pem.target:
        ev["symlink_to"] = pem.target
    if pem.detail:
        ev["detail"] = pem.detail
    return ev


@check("tls-ca-missing", scope="host", area="tls", severity="error",
       title="The CA certificate for TLS is present", needs=("libvirt-installed",), plans=True)
def tls_ca_missing(facts):
    """Looks at the CA certificate libvirt loads when TLS is in use (a TLS URI such as
    qemu://HOST/system, or a daemon with listen_tls and --listen): /etc/pki/CA/cacert.pem,
    the daemon's ca_file, or ~/.pki/libvirt/cacert.pem for a non-root client.
    Why: without it the connection (or the daemon) fails with "Cannot read CA certificate
    '/etc/pki/CA/cacert.pem': No such file or directory".
    Fix safety: unsafe; creates a new CA plus server and client certificates (existing
    certificates that no CA can verify are replaced; backups are kept)."""
    use = T.tls_use(facts)
    if not use.any:
        return _not_in_use(use)
    paths = {}
    if use.server:
        paths.setdefault(T.server_paths(facts).ca, "server")
    if use.client:
        paths.setdefault(T.client_paths(facts, T.resolved_uri(facts)).ca, "client")
    results, fix = [], []
    for path, side in paths.items():
        pem = T.load_cert(facts, path)
        ev = {**_pem_evidence(pem), "side": side, "tls_in_use": use.reasons}
        if _missing(pem):
            extra = f" ({pem.path} is a symlink to {pem.target}, which does not exist)" if pem.state == "dangling" else ""
            results.append(Fail(f"Cannot read CA certificate '{path}': {_why(pem)}{extra}", ev, key=path,
                                plan=_once(fix, lambda: create_ca(facts, use))))
        else:
            results.append(Pass(f"CA certificate {path} is present ({side} side)", ev, key=path))
    return results


@check("tls-server-cert-missing", scope="host", area="tls", severity="error",
       title="The server certificate and key for TLS are present", needs=("libvirt-installed",), plans=True)
def tls_server_cert_missing(facts):
    """Looks at the server certificate and key (/etc/pki/libvirt/servercert.pem,
    private/serverkey.pem, or cert_file/key_file of the daemon's config) when this host
    serves TLS: listen_tls with --listen, a -tls.socket unit, or a TLS URI naming this host.
    Why: the daemon refuses to start with "Cannot read certificate
    '/etc/pki/libvirt/servercert.pem': No such file or directory" (or "Cannot read private
    key ...").
    Fix safety: unsafe; issues a server certificate signed by the CA (a new CA when none)."""
    use = T.tls_use(facts)
    if not use.server:
        return _not_in_use(use, "server")
    sp = T.server_paths(facts)
    results, fix = [], []
    for path, what in ((sp.cert, "certificate"), (sp.key, "private key")):
        pem = T.load_cert(facts, path) if what == "certificate" else T.load_key(facts, path)
        ev = {**_pem_evidence(pem), "paths_from": sp.source, "tls_in_use": use.reasons}
        if _missing(pem):
            results.append(Fail(f"Cannot read {what} '{path}': {_why(pem)}", ev, key=path,
                                plan=_once(fix, lambda: certificate_plan(facts, {"server"}))))
        else:
            results.append(Pass(f"server {what} {path} is present", ev, key=path))
    return results


@check("tls-client-cert-missing", scope="host", area="tls", severity="error",
       title="The client certificate and key for TLS are present", needs=("libvirt-installed",), plans=True)
def tls_client_cert_missing(facts):
    """Looks at the client certificate and key a TLS URI needs
    (/etc/pki/libvirt/clientcert.pem and private/clientkey.pem as root,
    ~/.pki/libvirt/clientcert.pem and clientkey.pem otherwise, or ?pkipath=DIR).
    Why: libvirt 9.0.0 does not complain locally; the server drops the connection and the
    client only says "Unable to read TLS confirmation: Input/output error" (the server logs
    "No certificate was found.").
    Fix safety: unsafe; issues a client certificate signed by the CA (a new CA when none)."""
    use = T.tls_use(facts)
    if not use.client:
        return _not_in_use(use, "client")
    cp = T.client_paths(facts, T.resolved_uri(facts))
    results, fix = [], []
    for path, what in ((cp.cert, "certificate"), (cp.key, "private key")):
        pem = T.load_cert(facts, path) if what == "certificate" else T.load_key(facts, path)
        ev = {**_pem_evidence(pem), "paths_from": cp.source, "tls_in_use": use.reasons}
        if _missing(pem):
            results.append(Fail(
                f"client {what} {path} is missing ({_why(pem)}): the server rejects the connection and "
                f"virsh only says \"Unable to read TLS confirmation: Input/output error\"", ev, key=path,
                plan=_once(fix, lambda: certificate_plan(facts, {"client"}))))
        else:
            results.append(Pass(f"client {what} {path} is present", ev, key=path))
    return results


def _time_problems(info, label: str, path: str, now: _dt.datetime) -> list[str]:
    out = []
    if info.not_after < now:
        out.append(f"The {label} certificate {path} has expired (notAfter {info.not_after:%Y-%m-%d %H:%M} UTC)")
    if info.not_before > now:
        out.append(f"The {label} certificate {path} is not yet active (notBefore {info.not_before:%Y-%m-%d %H:%M} UTC)")
    return out


@check("tls-cert-invalid", scope="host", area="tls", severity="error",
       title="The TLS certificates are valid, signed by the CA, match their keys and names", needs=("libvirt-installed",))
def tls_cert_invalid(facts):
    """Parses every TLS file that is in use or present (CA, server and client certificate
    and key): PEM format, validity dates, signature by the CA, key pair, and for the server
    certificate the host's names (short name, FQDN, and the host of a TLS URI naming this host).
    Why: libvirt checks its own files at start ("The server certificate ... has expired",
    "Our own certificate ... failed validation against ...") but a peer only sees
    "authentication failed: Failed to verify peer's certificate", with the reason
    ("The certificate is not trusted.", "owner does not match the hostname") only in a warning.
    Fix: manual; re-issue the certificate (tls-ca-missing's fix creates a fresh set)."""
    use = T.tls_use(facts)
    sp = T.server_paths(facts)
    cp = T.client_paths(facts, T.resolved_uri(facts))
    sides = []
    for side, paths, in_use in (("server", sp, use.server), ("client", cp, use.client)):
        if in_use or any(facts.exists(p) for p in (paths.cert, paths.key)):
            sides.append((side, paths))
    if not sides:
        return _not_in_use(use)
    now = _dt.datetime.now(_dt.timezone.utc)
    results = []
    checked = []
    cas = {}
    for side, paths in sides:
        if paths.ca not in cas:
            cas[paths.ca] = T.load_cert(facts, paths.ca)
            ca = cas[paths.ca]
            problems = []
            if ca.state in ("not-pem", "invalid"):
                problems.append(f"CA certificate {paths.ca} {ca.detail}")
            elif ca.ok:
                info = T.cert_info(ca.obj)
                problems += _time_problems(info, "CA", paths.ca, now)
                if not info.is_ca:
                    problems.append(f"{paths.ca} is not a CA certificate (no basicConstraints CA:TRUE)")
            if ca.present:
                checked.append(paths.ca)
            if problems:
                results.append(Fail("; ".join(problems), {"path": paths.ca, "problems": problems}, key=paths.ca))
        ca = cas[paths.ca]
        cert = T.load_cert(facts, paths.cert)
        key = T.load_key(facts, paths.key)
        problems = []
        ev = {"path": paths.cert, "key": paths.key, "ca": paths.ca, "side": side}
        if cert.state in ("not-pem", "invalid"):
            problems.append(f"{side} certificate {paths.cert} {cert.detail}")
        if key.state in ("not-pem", "invalid"):
            problems.append(f"{side} key {paths.key} {key.detail}")
        if cert.ok:
            info = T.cert_info(cert.obj)
            ev.update(subject=info.subject, issuer=info.issuer, not_after=info.not_after.isoformat(),
                      names=list(info.names()))
            problems += _time_problems(info, side, paths.cert, now)
            if ca.ok:
                why = T.signed_by(cert.obj, ca.obj)
                if why:
                    problems.append(f"Our own certificate {paths.cert} failed validation against {paths.ca}: {why}")
            if key.ok and not T.key_matches(cert.obj, key.obj):
                problems.append(f"the private key {paths.key} does not belong to the certificate {paths.cert}")
            if side == "server":
                host = use.local_uri_host
                if host and not T.name_matches(info, host):
                    problems.append(f"Certificate [session] owner does not match the hostname {host} "
                                    f"(the certificate names {', '.join(info.names()) or 'nothing'})")
                names = T.host_names(facts)
                if names and not any(T.name_matches(info, n) for n in names) and not problems:
                    results.append(Warn(
                        f"the server certificate {paths.cert} names {', '.join(info.names()) or 'nothing'}, "
                        f"not this host ({', '.join(names)}): clients connecting by host name get "
                        f"\"Certificate [session] owner does not match the hostname\"", ev, key=paths.cert))
                    checked.append(paths.cert)
                    continue
        if cert.present or key.present:
            checked.append(paths.cert)
        if problems:
            ev["problems"] = problems
            results.append(Fail("; ".join(problems) + ": peers see \"authentication failed: Failed to verify "
                                "peer's certificate\"" if side == "server" else "; ".join(problems), ev,
                                key=paths.cert))
    if not results:
        return Pass(f"certificates are valid: {', '.join(checked) or 'none present'}", {"checked": checked})
    return results


# -- the fix: a CA, a server and a client certificate -------------------------------------
_material_cache: dict[int, tuple] = {}


def _material(facts, server_names: list[str], cn: str):
    """One generated set per facts object, so that the plans of several findings of one run
    write the same CA and certificates."""
    key = id(facts)
    hit = _material_cache.get(key)
    if hit is not None and hit[0] is facts:
        return hit[1]
    ca, ca_cert, ca_key = T.make_ca(f"virtdoctor CA on {cn}")
    server = T.issue(ca_cert, ca_key, cn, server=True, names=server_names)
    client = T.issue(ca_cert, ca_key, f"libvirt client on {cn}", server=False)
    material = (ca, server, client)
    if len(_material_cache) > 8:
        _material_cache.clear()
    _material_cache[key] = (facts, material)
    return material


def _server_names(facts) -> tuple[list[str], str]:
    names = T.host_names(facts)
    use = T.tls_use(facts)
    extra = [use.local_uri_host] if use.local_uri_host else []
    all_names = [*names, "localhost", "127.0.0.1", "::1", *extra]
    cn = next((n for n in names if "." in n), names[0] if names else "localhost")
    return list(dict.fromkeys(n for n in all_names if n)), cn


def _dirs_for(facts, paths: list[str], private: set[str]) -> list:
    """MakeDir for absent private directories (0700) so keys never sit in a readable dir."""
    out, seen = [], set()
    for p in paths:
        d = p.rsplit("/", 1)[0]
        if d in private and d not in seen and not facts.exists(d):
            seen.add(d)
            out.append(MakeDir(d, 0o700))
    return out


def certificate_plan(facts, want: set[str]):
    """`want` holds "server" and/or "client": what the failing check needs. With a usable CA
    (certificate plus virtdoctor's key file) only the missing certificates are issued; with no
    CA a new CA, server and client set is written at libvirt's paths."""
    sp = T.server_paths(facts)
    cp = T.client_paths(facts, T.resolved_uri(facts))
    names, cn = _server_names(facts)
    notes = ["keys are written 0600, certificates 0644; the CA key stays in "
             f"{T.CA_KEY_FILE} (0600) to issue more certificates: keep it safe",
             "a daemon that should serve TLS needs --listen (listen_tls = 1 is the default): "
             "restart it with 'libvirtd -d --listen' (or enable libvirtd-tls.socket); "
             "clients then connect with qemu://HOST/system",
             "other client machines need cacert.pem plus their own client certificate"]
    ca_path = sp.ca if "server" in want else cp.ca
    ca_pem = T.load_cert(facts, ca_path)
    signer = T.load_ca_for_signing(facts, ca_path) if ca_pem.ok else None
    if ca_pem.present and signer is None:
        return plan("Issue the missing certificates with your CA's key (virtdoctor does not have it)", Auto.MANUAL,
                    notes=[f"{ca_path} exists but its key is not at {T.CA_KEY_FILE}; follow "
                           "https://wiki.libvirt.org/page/TLSCreateServerCerts with certtool"])
    if signer is not None:
        ca_cert, ca_key = signer
        writes = []
        if "server" in want:
            s = T.issue(ca_cert, ca_key, cn, server=True, names=names)
            writes += [(sp.cert, s.cert_pem, 0o644), (sp.key, s.key_pem, 0o600)]
        if "client" in want:
            c = T.issue(ca_cert, ca_key, f"libvirt client on {cn}", server=False)
            writes += [(cp.cert, c.cert_pem, 0o644), (cp.key, c.key_pem, 0o600)]
        summary = f"Issue {' and '.join(sorted(want))} certificate(s) signed by the CA {ca_path}"
    else:
        ca, server, client = _material(facts, names, cn)
        writes = [(ca_path, ca.cert_pem, 0o644), (T.CA_KEY_FILE, ca.key_pem, 0o600),
                  (sp.cert, server.cert_pem, 0o644), (sp.key, server.key_pem, 0o600),
                  (cp.cert, client.cert_pem, 0o644), (cp.key, client.key_pem, 0o600)]
        if cp.ca != ca_path:
            writes.insert(1, (cp.ca, ca.cert_pem, 0o644))
        if sp.ca != ca_path:
            writes.insert(1, (sp.ca, ca.cert_pem, 0o644))
        summary = (f"Create a CA ({ca_path}) and a server certificate for {', '.join(names)} plus a "
                   "client certificate signed by it")
    seen = set()
    writes = [w for w in writes if not (w[0] in seen or seen.add(w[0]))]
    private = {p.rsplit("/", 1)[0] for p, _, mode in writes if mode == 0o600}
    actions = _dirs_for(facts, [p for p, _, _ in writes], private)
    for p, text, mode in writes:
        actions.append(WriteFile(p, text, mode))
        if mode == 0o600 and facts.exists(p):  # WriteFile keeps an existing file's mode
            actions.append(SetMode(p, 0o600))
    return plan(summary, Auto.UNSAFE, *actions, notes=notes)


def _once(cell: list, make):
    """The plan shared by every failure of one check run, built on the first."""
    if not cell:
        cell.append(make())
    return cell[0]


def create_ca(facts, use):
    want = {s for s, on in (("server", use.server), ("client", use.client)) if on}
    return certificate_plan(facts, want or {"server", "client"})


@hookimpl
def virtdoctor_checks():
    return [tls_ca_missing, tls_server_cert_missing, tls_client_cert_missing, tls_cert_invalid]
