"""Every paste: each reference text, wrapped the way other tools print it, still maps to its
slug (and texts that name no catalogue failure still match nothing). The wrappers follow the
tools' own formats (see virtdoctor/knowledge/unwrap.py for the source of each)."""
from __future__ import annotations

import json
import textwrap

import pytest

from tests.unit.test_knowledge import EXPECTED, concrete
from virtdoctor.knowledge import builtin_dir, load, parse_error
from virtdoctor.knowledge.unwrap import TRANSLATED_ERROR, unescape, unwrap_lines, variants


@pytest.fixture(scope="module")
def kb():
    return load([builtin_dir()])


def go_quote(s: str) -> str:
    """Go's %q (strconv.Quote) for the texts used here: JSON's escapes agree on them."""
    return json.dumps(s, ensure_ascii=False)


def hard_wrap(text: str, width: int) -> str:
    """A terminal: every line cut at `width` columns, mid-word."""
    out = []
    for line in text.split("\n"):
        out += [line[i:i + width] for i in range(0, max(len(line), 1), width)]
    return "\n".join(out)


def mail_wrap(text: str, width: int = 60) -> str:
    """A mail client: lines broken at spaces before `width`, then quoted with '> '."""
    out = []
    for line in text.split("\n"):
        out += textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [""]
    return "\n".join("> " + ln for ln in out)


TRACEBACK = ('Traceback (most recent call last):\n  File "/usr/lib/python3/dist-packages/libvirt.py", '
             'line 1409, in create\n    raise libvirtError(\'virDomainCreate() failed\')\n')

WRAPPERS = {
    "ansible": lambda t: 'fatal: [kvm1]: FAILED! => ' + json.dumps({"changed": False, "msg": t}),
    "json-in-json": lambda t: json.dumps({"stdout": "", "stderr": json.dumps({"error": t})}),
    "kubevirt-event": lambda t: ("Warning  SyncFailed  12s  virt-handler  server error. command SyncVMI failed: "
                                 + go_quote(f"LibvirtError(Code=1, Domain=10, Message='{t}')")),
    "libvirt-go": lambda t: f"virError(Code=1, Domain=10, Message='{t}')",
    "python-traceback": lambda t: TRACEBACK + f"libvirt.libvirtError: {t}",
    "python-repr": lambda t: f"[libvirtError({t!r})]",
    "virt-manager": lambda t: (f"Error starting domain: {t}\n\n" + TRACEBACK.replace(
        "libvirt.py", "virtManager/asyncjob.py") + f"libvirt.libvirtError: {t}"),
    "vagrant-libvirt": lambda t: ("There was an error talking to Libvirt. The error message is shown below:\n\n"
                                  f"Call to virDomainCreateWithFlags failed: {t}"),
    "syslog": lambda t: "\n".join(f"Nov 25 20:00:58 kvm1 libvirtd[1234]: {ln}" for ln in t.split("\n")),
    "libvirtd-log": lambda t: f"2026-11-25 20:00:58.119+0000: 1240: error : qemuProcessStart:7712 : {t}",
    "terminal-wrap": lambda t: hard_wrap(f"error: Failed to start domain 'web01'\nerror: {t}", 47),
    "mail-wrap": lambda t: mail_wrap(f"error: Failed to start domain 'web01'\nerror: {t}"),
    "translated-de": lambda t: f"Fehler: Domain web01 konnte nicht gestartet werden\nFehler: {t}",
    "translated-ja": lambda t: f"エラー: {t}",
    "older-wording": lambda t: f"error: {t.replace('internal error: ', 'internal error ')}",
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapped_reference_texts_keep_their_slug(kb, name):
    wrap = WRAPPERS[name]
    wrong = []
    for text, slug in EXPECTED.items():
        matches = kb.match(wrap(concrete(text)))
        got = [m.id for m in matches]
        if (slug is None and got) or (slug is not None and got[:1] != [slug]):
            wrong.append((text, slug, got))
    assert not wrong, f"{len(wrong)} texts: {wrong[:5]}"


NOT_LIBVIRT = [
    "Could not find the requested service foo: host",
    "Permission denied",
    "E: Unable to locate package libvirt-daemon-systm",
    "ssh: connect to host kvm1 port 22: Connection refused",
]


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_texts_naming_no_failure_match_nothing_in_any_wrapper(kb, name):
    for text in NOT_LIBVIRT:
        assert kb.match(WRAPPERS[name](text)) == [], (name, text)


def test_unescape_reads_json_python_and_go_escapes():
    assert unescape(r"a\"b\nc\'d\\e\u00e9\x41\/") == "a\"b\nc'd\\eéA/"


def test_hard_wrapped_lines_are_joined_both_ways():
    tight, spaced = unwrap_lines("error: Cannot access storage fi\nle '/x': Permission denied")
    assert "Cannot access storage file '/x'" in tight
    tight, spaced = unwrap_lines("error: Cannot access storage\nfile '/x': Permission denied")
    assert "Cannot access storage file '/x'" in spaced
    assert unwrap_lines("short\nlines") == []


def test_plain_text_has_one_reading():
    assert variants("internal error: qemu unexpectedly closed the monitor") == [
        "internal error: qemu unexpectedly closed the monitor"]


def test_translated_prefixes_come_from_the_po_files():
    assert "Fehler: " in TRANSLATED_ERROR and "エラー: " in TRANSLATED_ERROR and "erreur :" in TRANSLATED_ERROR


def test_parse_error_reads_a_translated_virsh_line_and_an_old_wording():
    parsed = parse_error("Fehler: Domain web01 konnte nicht gestartet werden\nFehler: internal error Network "
                         "'default' is not active")
    assert parsed["code"] == "VIR_ERR_INTERNAL_ERROR"
    assert parsed["detail"] == "Network 'default' is not active"


def test_explain_finds_the_message_in_an_ansible_paste_on_stdin(capsys, monkeypatch):
    import io
    import sys

    from virtdoctor.cli import main

    paste = ('fatal: [kvm1]: FAILED! => {"changed": false, "msg": "internal error: qemu unexpectedly closed the '
             'monitor: 2026-11-25T20:00:58.119142Z qemu-system-x86_64: Could not access KVM kernel module: '
             'Permission denied\\n2026-11-25T20:00:58.119142Z qemu-system-x86_64: -accel kvm: failed to '
             'initialize kvm: Permission denied"}\n')
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(paste.encode()), encoding="utf-8"))
    status = main(["--format", "json", "explain", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0 and doc["matches"][0]["id"] == "kvm-device-permission"


def test_an_unknown_message_is_read_from_inside_its_wrapper():
    from virtdoctor.knowledge.unwrap import innermost

    text = "virError(Code=1, Domain=10, Message='internal error: something new happened')"
    parsed = parse_error(innermost(text))
    assert parsed["code"] == "VIR_ERR_INTERNAL_ERROR" and parsed["detail"] == "something new happened"
    ansible = 'fatal: [h]: FAILED! => {"changed": false, "msg": "operation failed: it \\"broke\\""}'
    assert parse_error(innermost(ansible))["detail"] == 'it "broke"'
    kubevirt = ('server error. command SyncVMI failed: "LibvirtError(Code=1, Domain=10, '
                "Message='internal error: new\\\"ish')\"")
    assert parse_error(innermost(json.dumps({"msg": kubevirt})))["detail"] == 'new"ish'
    assert innermost("libvirt: QEMU Driver error : x") == "libvirt: QEMU Driver error : x"
