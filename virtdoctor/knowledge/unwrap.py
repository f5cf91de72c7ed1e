"""Every paste: find libvirt's/QEMU's message inside what other tools print.

People paste errors as their tools show them, not as libvirt wrote them. :func:`variants`
returns the text itself plus the readings below (each only when it differs), and the
knowledge base matches all of them, keeping each slug's best match. Every reading only
*adds* candidate text, so a message that matched before still matches.

Formats, and where each comes from (the tools' own source, not pastes of it):

- Escaped strings (JSON ``\\"``, ``\\n``, ``\\uXXXX``, ``\\/``: RFC 8259 section 7; Python
  ``repr`` ``\\'``, ``\\xNN``; Go ``%q``): unescaped, up to three levels deep (JSON inside JSON,
  e.g. a KubeVirt event inside an Ansible result).
- libvirt-python: ``libvirt.libvirtError`` is an ``Exception`` whose message is the
  libvirt error's message (libvirt-python ``libvirt-override.py``, ``class libvirtError``):
  a traceback ends ``libvirt.libvirtError: MESSAGE``; its repr is ``libvirtError('MESSAGE')``
  (Python's repr picks ``"`` quotes when the message holds ``'``).
- libvirt-go / libvirt-go-module ``error.go``, ``func (err Error) Error() string``:
  ``virError(Code=%d, Domain=%d, Message='%s')`` (the message is not escaped).
- KubeVirt ``pkg/virt-launcher/virtwrap/errors``, ``FormatLibvirtError``:
  ``LibvirtError(Code=%d, Domain=%d, Message='%s')``, which then travels in Kubernetes
  event messages (``kubectl get events``/``describe``: columns, then the message, often Go
  ``%q``-quoted inside ``server error. command SyncVMI failed: "..."``).
- Ansible: a module failure is the JSON object the module printed
  (``AnsibleModule.fail_json(msg=...)``, ansible ``module_utils/basic.py``), shown by the
  default callback as ``fatal: [HOST]: FAILED! => {"changed": false, "msg": "..."}``.
- virt-manager: ``_("Error starting domain: %s") % str(e)`` with the traceback as details
  (virtManager's start-domain error dialog).
- vagrant-libvirt through ruby-libvirt: ``Call to %s failed: %s`` (ruby-libvirt
  ``ext/libvirt/common.c``, ``create_error``), e.g. ``Call to virDomainCreateWithFlags
  failed: MESSAGE``.
- Log line headers: libvirtd's own (``TS: PID: LEVEL : FUNCTION:LINE : `` from
  ``src/util/virlog.c``), journal/syslog (``Mon DD HH:MM:SS HOST UNIT[PID]: ``, journalctl's
  ``short-iso`` with an ISO time), QEMU's ``TS qemu-system-x86_64: ``: removed so that the
  message starts the line.
- Hard-wrapped lines: a terminal cuts at its width (mid-word, nothing lost); a mail client
  breaks at a space (the space lost) and may quote with ``> ``. Runs of lines that reach the
  paste's wrap width are joined both ways.
- virsh's ``error: `` prefix in the languages virsh is translated into: the ``msgstr`` of
  ``msgid "error: "`` (``tools/vsh.c``, ``vshError``) in libvirt 9.0.0's ``po/*.po``; read
  back as ``error: ``.
- Older libvirt wordings: before libvirt 1.0.x the virErrorMsgStrings had no colon after
  ``internal error`` (``"internal error %s"``): read as ``internal error: ``.
"""
from __future__ import annotations

import json
import re

# msgstr of msgid "error: " in libvirt 9.0.0 po/*.po (languages with a translation that is
# not "error: " itself); extracted with `msggrep -K -e '^error: $'` from the source package.
TRANSLATED_ERROR = (
    "ভুল: ", "грешка: ", "ত্রুটি: ", "pogreška: ", "chyba:", "fejl: ", "Fehler: ", "virhe: ",
    "erreur :", "ભૂલ: ", "त्रुटि: ", "hiba: ", "kesalahan: ", "errore: ", "エラー: ", "შეცდომა: ",
    "ದೋಷ: ", "오류: ", "പിശക്: ", "चूक : ", "ralat:", "feil: ", "fout: ", "ତୃଟି: ", "ਗਲਤੀ: ", "błąd: ",
    "erro: ", "erro:", "ошибка: ", "greška: ", "fel: ", "பிழை: ", "దోషం: ", "помилка: ", "lỗi: ",
    "错误： ", "錯誤：",
)
_TRANSLATED_RE = re.compile(
    r"^(?:" + "|".join(re.escape(p.strip()) for p in sorted(set(TRANSLATED_ERROR), key=len, reverse=True))
    + r")\s*", re.M)

_ESCAPE_RE = re.compile(r"""\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|["'\\/nrtbf])""")
_SIMPLE = {'"': '"', "'": "'", "\\": "\\", "/": "/", "n": "\n", "r": "", "t": "\t", "b": "", "f": ""}

# messages inside known wrappers (each group "m" is the libvirt/QEMU message)
_WRAPPERS = [
    # libvirt-go error.go and KubeVirt's FormatLibvirtError
    re.compile(r"(?:vir|Libvirt)Error\(Code=-?\d+, Domain=-?\d+, Message='(?P<m>.*)'\)"),
    # libvirt-python: repr and traceback
    re.compile(r"libvirtError\('(?P<m>(?:[^'\\]|\\.)*)'\)"),
    re.compile(r'libvirtError\("(?P<m>(?:[^"\\]|\\.)*)"\)'),
    re.compile(r"libvirt\.libvirtError: (?P<m>.*)"),
    # virt-manager's dialog; ruby-libvirt (vagrant-libvirt)
    re.compile(r"Error starting domain: (?P<m>.*)"),
    re.compile(r"Call to vir\w+ failed: (?P<m>.*)"),
]
_JSON_MSG_RE = re.compile(r'"(?:msg|message|stderr|module_stderr|error)"\s*:\s*"(?P<m>(?:[^"\\]|\\.)*)"')

# log headers (removed, so that a message starts its line)
_HEADERS = re.compile(
    r"^(?:"
    # libvirtd: 2026-11-25 20:00:58.119+0000: 1240: error : qemuProcessStart:7712 :
    r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?[+-]\d{4}: \d+: (?:debug|info|warning|error) : "
    r"(?:[A-Za-z_]\w*:\d+ : )?"
    # journal short / syslog: Nov 25 20:00:58 host libvirtd[1234]:
    r"|(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d{2}:\d{2}:\d{2} \S+ [\w@.-]+(?:\[\d+\])?: "
    # journal short-iso(-precise) / RFC 5424-ish: 2026-11-25T20:00:58+0000 host unit[pid]:
    r"|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})? \S+ [\w@.-]+(?:\[\d+\])?: "
    r")", re.M)
_LIBVIRT_HANDLER = re.compile(r"^libvirt: [^:]*?error : ", re.M)  # virDefaultErrorFunc
_VIRSH_ERROR = re.compile(r"^error: ", re.M)
_OLD_INTERNAL = re.compile(r"\binternal error (?=[^:\s])")
_QUOTE = re.compile(r"^(?:[ \t]*>)+[ \t]?", re.M)

_MAX_TEXT = 1 << 20  # readings are made for pastes, not for whole logs


def unescape(text: str) -> str:
    """One level of backslash escapes (JSON, Python repr, Go %q) read back."""
    def one(m: re.Match) -> str:
        e = m.group(1)
        if e in _SIMPLE:
            return _SIMPLE[e]
        try:
            return chr(int(e[1:], 16))
        except ValueError:
            return m.group(0)
    return _ESCAPE_RE.sub(one, text)


def _json_strings(text: str) -> list[str]:
    out = []
    for m in _JSON_MSG_RE.finditer(text):
        try:
            out.append(json.loads(f'"{m.group("m")}"'))
        except ValueError:
            out.append(unescape(m.group("m")))
    return out


def _extract(text: str) -> list[str]:
    """Messages found inside the known wrappers."""
    found = _json_strings(text)
    for rx in _WRAPPERS:
        for m in rx.finditer(text):
            msg = m.group("m")
            found.append(unescape(msg) if "\\" in msg else msg)
    return found


def _clean(text: str) -> str:
    """Headers removed, translated `error:` prefixes and old wordings read as today's."""
    text = _HEADERS.sub("", text)
    text = _LIBVIRT_HANDLER.sub("", text)
    text = _TRANSLATED_RE.sub("error: ", text)
    return _OLD_INTERNAL.sub("internal error: ", text)


def unwrap_lines(text: str) -> list[str]:
    """Hard-wrapped paragraphs joined. A line as long as the paste's longest line was cut by
    a terminal (mid-word: join without a separator); a line followed by a word that would
    not have fitted after it within the longest breakable line was broken by a mail client
    at a space (join with a space). Returns both joinings ([] when no line looks wrapped)."""
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    if len(lines) < 2:
        return []
    width = max(len(ln) for ln in lines)
    # a mail client's limit: its longest line that it could have broken (a line without a
    # space, such as a long path or JSON, may run past the limit)
    limit = max((len(ln.rstrip()) for ln in lines if " " in ln.strip()), default=width)
    if width < 20:
        return []
    joined_tight: list[str] = []
    joined_space: list[str] = []
    wrapped = False
    cur_t = cur_s = None
    for i, ln in enumerate(lines):
        if cur_t is None:
            cur_t, cur_s = ln, ln
        else:
            cur_t += ln.lstrip() if cur_t.endswith(" ") else ln
            cur_s += ln if cur_s.endswith(" ") or ln.startswith(" ") else " " + ln
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.strip() and not _HEADERS.match(nxt) and ln.strip():
            first_word = nxt.split(None, 1)[0]
            if len(ln) >= width or len(ln.rstrip()) + 1 + len(first_word) > limit:
                wrapped = True
                continue
        joined_tight.append(cur_t)
        joined_space.append(cur_s)
        cur_t = cur_s = None
    if not wrapped:
        return []
    return ["\n".join(joined_tight), "\n".join(joined_space)]


def _layers(text: str) -> list[str]:
    base = text.replace("\r\n", "\n")
    if _QUOTE.search(base):
        base = _QUOTE.sub("", base)
    layers = [base]
    cur = base
    for _ in range(3):  # JSON in JSON in a Go %q string
        if "\\" not in cur:
            break
        nxt = unescape(cur)
        if nxt == cur:
            break
        layers.append(nxt)
        cur = nxt
    return layers


def innermost(text: str, _depth: int = 0) -> str:
    """The message itself, for reading an unknown one: the message found inside the first
    known wrapper, read again while it is itself wrapped (at most three levels); else the
    text as it is (parse_error reads log headers itself)."""
    if len(text) > _MAX_TEXT or _depth >= 3:
        return text
    msgs = _extract(text.replace("\r\n", "\n"))
    if not msgs:
        return text
    return innermost(msgs[0], _depth + 1)


def variants(text: str) -> list[str]:
    """The text, then every distinct reading of it (see the module docstring)."""
    out = [text]
    if len(text) > _MAX_TEXT:
        return out

    def add(t: str) -> None:
        if t and t not in out:
            out.append(t)

    layers = _layers(text)
    readings: list[str] = []
    for layer in layers:
        readings.append(layer)
        msgs = _extract(layer)
        if msgs:
            readings.append("\n".join(msgs))
    for r in readings:
        add(r)
        add(_clean(r))
        for joined in unwrap_lines(r):
            add(_clean(joined))
    return out
