"""Message normalisation: what can be read from a libvirt message that no entry knows.

(The paste unwrapper that finds libvirt's message inside what other tools print lives in
:mod:`virtdoctor.knowledge.unwrap`.)
"""
from __future__ import annotations

import errno as _errno
import os
import re
from typing import Any

from virtdoctor.knowledge.unwrap import _OLD_INTERNAL, _TRANSLATED_RE

# libvirt 9.0.0 src/util/virerror.c, virErrorMsgStrings (the prefixes that matter here)
PREFIXES: tuple[tuple[str, str], ...] = (
    ("internal error: ", "VIR_ERR_INTERNAL_ERROR"),
    ("unsupported configuration: ", "VIR_ERR_CONFIG_UNSUPPORTED"),
    ("XML error: ", "VIR_ERR_XML_ERROR"),
    ("Requested operation is not valid: ", "VIR_ERR_OPERATION_INVALID"),
    ("operation failed: ", "VIR_ERR_OPERATION_FAILED"),
    ("invalid argument: ", "VIR_ERR_INVALID_ARG"),
    ("Domain not found: ", "VIR_ERR_NO_DOMAIN"),
    ("Network not found: ", "VIR_ERR_NO_NETWORK"),
    ("this function is not supported by the connection driver: ", "VIR_ERR_NO_SUPPORT"),
    ("no connection driver available for ", "VIR_ERR_NO_CONNECT"),
    ("authentication failed: ", "VIR_ERR_AUTH_FAILED"),
    ("authentication unavailable: ", "VIR_ERR_AUTH_UNAVAILABLE"),
    ("authentication cancelled: ", "VIR_ERR_AUTH_CANCELLED"),
    ("Operation not supported: ", "VIR_ERR_OPERATION_UNSUPPORTED"),
    ("access denied: ", "VIR_ERR_ACCESS_DENIED"),
    ("Unsafe migration: ", "VIR_ERR_MIGRATE_UNSAFE"),
)
_PREFIX_RE = re.compile("|".join(re.escape(p) for p, _ in PREFIXES))
_CODE = dict(PREFIXES)
# one regex for a daemon log line and one for a QEMU line, shared with the facts layer's log readers
from virtdoctor.facts.logs import DAEMON_LINE as _DAEMON_RE  # noqa: E402
from virtdoctor.facts.logs import QEMU_LINE as _QEMU_RE  # noqa: E402

_HANDLER_RE = re.compile(r"libvirt: (?P<domain>[^:]*?) ?error : (?P<msg>.*)$")
_STRERROR = {os.strerror(n): name for n, name in _errno.errorcode.items()}
_ERRNO_RE = re.compile(": (" + "|".join(sorted((re.escape(s) for s in _STRERROR), key=len, reverse=True)) + r")\.?\s*$")


def parse_error(text: str) -> dict[str, Any]:
    """What can be read from an unknown libvirt message: virsh's `error: ` lines, a daemon
    log line's time/thread/level/function, the default handler's error domain
    (`libvirt: <domain> error : `), the libvirt prefix and its VIR_ERR_* code, and a
    trailing strerror text with its errno name. Keys are present only when found."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    out: dict[str, Any] = {}
    if not lines:
        return out
    # virsh's "error: " in any language it is translated into, and older wordings
    lines = [_OLD_INTERNAL.sub("internal error: ", _TRANSLATED_RE.sub("error: ", ln)) for ln in lines]
    virsh = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
    if virsh:
        out["virsh"] = virsh
    # the line that carries the libvirt message: the last virsh error line, else the
    # first line with a known prefix, else the first line
    msg = None
    if virsh:
        msg = virsh[-1]
    else:
        for ln in lines:
            if _PREFIX_RE.search(ln):
                msg = ln
                break
        if msg is None:
            msg = lines[0]
    m = _DAEMON_RE.match(msg)
    if m:
        out.update({"timestamp": m["ts"], "thread": int(m["thread"]), "level": m["level"]})
        if m["function"]:
            out["function"] = m["function"]
            out["function_line"] = int(m["lineno"])
        msg = m["msg"]
    else:
        m = _QEMU_RE.match(msg)
        if m:
            out["timestamp"] = m["ts"]
            msg = m["msg"]
    m = _HANDLER_RE.search(msg)
    if m:
        out["domain"] = m["domain"].strip()
        msg = m["msg"]
    p = _PREFIX_RE.search(msg)
    if p:
        out["prefix"] = p.group(0).strip()
        out["code"] = _CODE[p.group(0)]
        if p.start() > 0:
            out["context"] = msg[:p.start()].rstrip(": ")
        out["detail"] = msg[p.end():]
    e = _ERRNO_RE.search(msg)
    if e:
        out["strerror"] = e.group(1)
        out["errno"] = _STRERROR[e.group(1)]
    out["message"] = msg
    return out
