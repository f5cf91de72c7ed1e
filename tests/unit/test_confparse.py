"""Tests for virtdoctor.confparse (libvirt virconf.c syntax)."""

from __future__ import annotations

import os
import random
import string

import pytest

from virtdoctor.confparse import (
    Conf,
    ConfError,
    parse,
    remove_key,
    render_value,
    set_key,
)

# Excerpts in the shape of Debian 12's shipped files.
QEMU_CONF = """\
# Master configuration file for the QEMU driver.
# All settings described here are optional - if omitted, sensible
# defaults are used.

# VNC is configured to listen on 127.0.0.1 by default.
# To make it listen on all public interfaces, uncomment
# this next option.
#
#vnc_listen = "0.0.0.0"

# The user for QEMU processes run by the system instance. It can be
# specified as a user name or as a user id. The qemu driver will try to
# parse this value first as a name and then, if the name doesn't exist,
# as a user id.
#
# Since a sequence of digits is a valid user name, a leading plus sign
# can be used to ensure that a user id will not be interpreted as a user
# name.
#
# Some examples of valid values are:
#
#       user = "qemu"   # A user named "qemu"
#       user = "+0"     # Super user (uid=0)
#       user = "100"    # A user named "100" or a user with uid=100
#
#user = "libvirt-qemu"

# The group for QEMU processes run by the system instance. It can be
# specified in a similar way to user.
#group = "libvirt-qemu"

# Whether libvirt should dynamically change file ownership
# to match the configured user/group above. Defaults to 1.
# Set to 0 to disable file ownership changes.
#dynamic_ownership = 1

# Location of master nvram file
#
# This configuration option is obsolete. Libvirt will follow the
# QEMU firmware metadata specification to automatically locate
# firmware images. See docs/formatdomain.html#operating-system-booting
#
#nvram = [
#   "/usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd",
#   "/usr/share/OVMF/OVMF_CODE.secboot.fd:/usr/share/OVMF/OVMF_VARS.fd",
#   "/usr/share/AAVMF/AAVMF_CODE.fd:/usr/share/AAVMF/AAVMF_VARS.fd",
#   "/usr/share/AAVMF/AAVMF32_CODE.fd:/usr/share/AAVMF/AAVMF32_VARS.fd"
#]

# The backend to use for handling stdout/stderr output from
# QEMU processes.
#stdio_handler = "logd"
"""

LIBVIRTD_CONF = """\
# Master libvirt daemon configuration file
#

#################################################################
#
# Network connectivity controls
#

# Flag listening for secure TLS connections on the public TCP/IP port.
#
# This setting is not required or honoured if using systemd socket
# activation.
#
# It is necessary to setup a CA and issue server certificates before
# using this capability.
#
# This is enabled by default, uncomment this to disable it
listen_tls = 0

# Listen for unencrypted TCP connections on the public TCP/IP port.
#listen_tcp = 1

unix_sock_group = "libvirt"
unix_sock_rw_perms = "0770"
max_clients = 5000
min_workers = 5
log_level = 3
log_outputs="1:file:/var/log/libvirt/libvirtd.log"
tls_priority="@LIBVIRT,SYSTEM"   # the default
keepalive_interval = -1
"""

LIBVIRT_CONF = """\
#
# This can be used to setup URI aliases for frequently
# used connection URIs. Aliases may contain only the
# characters  a-Z, 0-9, _, -.
#
# Following the '=' may be any valid libvirt connection
# URI, including arbitrary parameters

uri_aliases = [
  "hail=qemu+ssh://root@hail.cloud.example.com/system",
  "sleet=qemu+ssh://root@sleet.cloud.example.com/system",
]

#
# These can be used in cases when no URI is supplied by the application
# (@uri_default also prevents probing of the hypervisor driver).
#
#uri_default = "qemu:///system"
"""

ACTIVE_QEMU = """\
user = "+0"
group = 'kvm'   # single quotes are fine too
dynamic_ownership = 1
security_driver = [ "apparmor" ]
nvram = [
   "/usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd",
   "/usr/share/OVMF/OVMF_CODE.secboot.fd:/usr/share/OVMF/OVMF_VARS.fd",
   "/usr/share/AAVMF/AAVMF_CODE.fd:/usr/share/AAVMF/AAVMF_VARS.fd"
]
cgroup_device_acl = [
    "/dev/null", "/dev/full", "/dev/zero",
    "/dev/random", "/dev/urandom",
    "/dev/ptmx", "/dev/kvm",
]
remote_display_port_min = 5900 # trailing comment
"""

NVRAM = [
    "/usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd",
    "/usr/share/OVMF/OVMF_CODE.secboot.fd:/usr/share/OVMF/OVMF_VARS.fd",
    "/usr/share/AAVMF/AAVMF_CODE.fd:/usr/share/AAVMF/AAVMF_VARS.fd",
]


# --- parsing -------------------------------------------------------------------


def test_shipped_style_files_parse_to_nothing_but_comments():
    conf = parse(QEMU_CONF, "qemu.conf")
    assert isinstance(conf, Conf)
    assert conf.keys() == []
    assert "user" not in conf
    assert conf.get("user", "root") == "root"
    # commented defaults are discoverable, doc-example lines are not
    ck = conf.commented_keys()
    assert ck == ["vnc_listen", "user", "group", "dynamic_ownership", "nvram", "stdio_handler"]


def test_libvirtd_conf_values():
    conf = parse(LIBVIRTD_CONF, "libvirtd.conf")
    assert conf.get("listen_tls") == 0
    assert conf.type_of("listen_tls") == "ullong"
    assert "listen_tcp" not in conf
    assert conf.get("unix_sock_rw_perms") == "0770"  # string, not octal int
    assert conf.get("max_clients") == 5000
    assert conf.get("log_outputs") == "1:file:/var/log/libvirt/libvirtd.log"
    assert conf.get("tls_priority") == "@LIBVIRT,SYSTEM"
    assert conf.entry("tls_priority").comment == " the default"
    assert conf.get("keepalive_interval") == -1
    assert conf.type_of("keepalive_interval") == "llong"
    assert conf.line_of("listen_tls") == 18
    assert conf.line_of("log_outputs") == 28
    assert conf.keys()[0] == "listen_tls"
    assert dict(conf.items())["min_workers"] == 5
    assert conf.duplicates() == []


def test_uri_aliases_list_with_trailing_comma():
    conf = parse(LIBVIRT_CONF, "libvirt.conf")
    assert conf.get("uri_aliases") == [
        "hail=qemu+ssh://root@hail.cloud.example.com/system",
        "sleet=qemu+ssh://root@sleet.cloud.example.com/system",
    ]
    assert conf.line_of("uri_aliases") == 9
    assert conf.entry("uri_aliases").end_line == 12
    assert "uri_default" not in conf


def test_active_qemu_values():
    conf = parse(ACTIVE_QEMU, "qemu.conf")
    assert conf.get("user") == "+0"
    assert conf.get("group") == "kvm"
    assert conf.get("dynamic_ownership") == 1
    assert conf.get("security_driver") == ["apparmor"]
    assert conf.get("nvram") == NVRAM
    assert conf.line_of("nvram") == 5
    assert conf.get("cgroup_device_acl")[-1] == "/dev/kvm"
    assert len(conf.get("cgroup_device_acl")) == 7
    assert conf.get("remote_display_port_min") == 5900
    assert conf.line_of("remote_display_port_min") == 15
    assert conf["user"] == "+0"
    with pytest.raises(KeyError):
        conf["nope"]


def test_get_returns_copies():
    conf = parse(ACTIVE_QEMU)
    conf.get("nvram").append("x")
    assert conf.get("nvram") == NVRAM


def test_value_forms():
    text = (
        "a = 'single \"double\" inside'\n"
        'b = """multi\nline"""\n'
        "c = +7\n"
        "d = -0\n"
        "e = []\n"
        "f = [ [1, \"x\"], -2, ]\n"
        'g = "back\\slash"\n'
        'h = "has # hash"  # real comment\n'
        "i=1;j=2 ; k = 3\n"
        "x9_y = 4\n"
    )
    conf = parse(text)
    assert conf.get("a") == 'single "double" inside'
    assert conf.get("b") == "multi\nline"
    assert conf.line_of("c") == 4  # the triple-quoted string spans a line
    assert conf.get("c") == 7 and conf.type_of("c") == "ullong"
    assert conf.get("d") == 0 and conf.type_of("d") == "llong"
    assert conf.get("e") == []
    assert conf.get("f") == [[1, "x"], -2]
    assert conf.get("g") == "back\\slash"  # no escape sequences in libvirt
    assert conf.get("h") == "has # hash"
    assert (conf.get("i"), conf.get("j"), conf.get("k")) == (1, 2, 3)
    assert conf.line_of("k") == 10
    assert conf.get("x9_y") == 4


def test_duplicates_first_assignment_wins():
    # virConfGetValue() walks the entries from the start and returns the
    # first match (checked against libvirt 9.0's parser).
    text = 'log_level = 3\nlisten_tls = 0\nlog_level = 1\nlog_level = 2\n'
    conf = parse(text)
    assert conf.get("log_level") == 3
    assert conf.line_of("log_level") == 1
    assert conf.lines_of("log_level") == [1, 3, 4]
    assert conf.duplicates() == ["log_level"]
    assert conf.keys() == ["log_level", "listen_tls"]


def test_empty_and_comment_only():
    assert parse("").keys() == []
    assert parse("# only a comment").keys() == []
    assert parse("\n\n# c\n\n").keys() == []
    assert parse("a = 1\n   \n\n").get("a") == 1
    assert parse("\r\na = 1\r\nb = 'x'\r\n").get("b") == "x"


# --- syntax errors: message and line are libvirt's own ---------------------------


@pytest.mark.parametrize(
    "text, line, msg",
    [
        ('user = "qemu\n', 1, "unterminated string"),
        ("# c\ngroup = 'kvm\n", 2, "unterminated string"),
        # libvirt reports where its scan for the closing quotes stopped
        ('a = 1\nb = """never\nclosed\n\n', 3, "unterminated string"),
        ("a = 1\nlisten_tls 0\n", 2, "expecting an assignment"),
        ("a = 1\n\nlisten_tls\n", 3, "expecting an assignment"),
        ("log.level = 1\n", 1, "expecting an assignment"),
        ("unix-sock = 1\n", 1, "expecting an assignment"),
        ("_private = 1\n", 1, "expecting a name"),
        ("1abc = 1\n", 1, "expecting a name"),
        ("a = 1\n; b = 2\n", 2, "expecting a name"),
        ("a = 1\n = 2\n", 2, "expecting a name"),
        ("a =\n1\n", 1, "expecting a value"),
        ("a = yes\n", 1, "expecting a value"),
        ("a = true\n", 1, "expecting a value"),
        ("a = ", 1, "expecting a value"),
        ("a = -\n", 1, "unterminated number"),
        ("a = 12abc\n", 1, "expecting a separator"),
        ('a = "x" "y"\n', 1, "expecting a separator"),
        ("a = 1 b = 2\n", 1, "expecting a separator"),
        ('nvram = [\n  "a"\n  "b"\n]\n', 3, "expecting a separator in list"),
        ('nvram = [\n  "a",\n  "b"\n', 4, "list is not closed with ]"),
        ("a = [ , ]\n", 1, "expecting a value"),
        ("a = [1,,2]\n", 1, "expecting a value"),
        # libvirt does not allow comments inside lists
        ('nvram = [\n  "a", # first\n  "b"\n]\n', 2, "expecting a value"),
        ('nvram = [\n  # leading comment\n  "a"\n]\n', 2, "expecting a value"),
        ('nvram = [\n  "a" # no comma\n]\n', 2, "expecting a separator in list"),
        # a non-empty file of blanks only is rejected by libvirt too
        ("\n\n", 3, "expecting a name"),
    ],
)
# Every (line, message) pair above was checked against libvirt 9.0's own
# parser (virsh reading a per-user libvirt.conf).
def test_syntax_errors(text, line, msg):
    with pytest.raises(ConfError) as ei:
        parse(text, "/etc/libvirt/qemu.conf")
    err = ei.value
    assert (err.line, err.msg) == (line, msg)
    assert err.path == "/etc/libvirt/qemu.conf"
    assert str(err) == f"/etc/libvirt/qemu.conf:{line}: {msg}"


def test_conferror_default_path():
    with pytest.raises(ConfError, match=r"^<string>:1: unterminated string$"):
        parse('a = "x')


# --- rendering -------------------------------------------------------------------


def test_render_value():
    assert render_value("qemu") == '"qemu"'
    assert render_value("+0") == '"+0"'
    assert render_value(True) == "1"
    assert render_value(False) == "0"
    assert render_value(0) == "0"
    assert render_value(-1) == "-1"
    assert render_value(["a", "b"]) == '["a", "b"]'
    assert render_value([]) == "[]"
    assert render_value(("a", 1, [True])) == '["a", 1, [1]]'
    assert render_value('say "hi"') == "'say \"hi\"'"
    assert render_value("it's \"x\" ok") == '"""it\'s "x" ok"""'
    assert render_value("two\nlines") == '"""two\nlines"""'
    assert render_value(["a", "b"], indent="  ") == '[\n  "a",\n  "b"\n]'


def test_render_value_rejects_unrepresentable():
    with pytest.raises(TypeError):
        render_value(1.5)
    with pytest.raises(TypeError):
        render_value(None)
    with pytest.raises(TypeError):
        render_value({"a": 1})
    for bad in ['both \' and "', 'has """ inside\n', "nul\0"]:
        with pytest.raises(ValueError):
            render_value(bad)


# --- set_key ----------------------------------------------------------------------


def test_set_key_replace_string_in_place():
    new = set_key(ACTIVE_QEMU, "user", "libvirt-qemu")
    assert new == ACTIVE_QEMU.replace('user = "+0"', 'user = "libvirt-qemu"')


def test_set_key_keeps_trailing_comment():
    new = set_key(ACTIVE_QEMU, "group", "libvirt")
    assert "group = \"libvirt\"   # single quotes are fine too\n" in new
    new = set_key(ACTIVE_QEMU, "remote_display_port_min", 5901)
    assert new.endswith("remote_display_port_min = 5901 # trailing comment\n")
    new = set_key(LIBVIRTD_CONF, "tls_priority", "NORMAL")
    assert 'tls_priority="NORMAL"   # the default\n' in new


def test_set_key_replaces_multiline_list():
    new = set_key(ACTIVE_QEMU, "nvram", ["/a:/b", "/c:/d"])
    assert (
        'dynamic_ownership = 1\nsecurity_driver = [ "apparmor" ]\n'
        'nvram = [\n   "/a:/b",\n   "/c:/d"\n]\ncgroup_device_acl = [\n'
    ) in new
    conf = parse(new)
    assert conf.get("nvram") == ["/a:/b", "/c:/d"]
    assert conf.get("cgroup_device_acl") == parse(ACTIVE_QEMU).get("cgroup_device_acl")
    assert conf.line_of("cgroup_device_acl") == 9
    # a single-line list stays on one line
    new = set_key(ACTIVE_QEMU, "security_driver", ["selinux", "apparmor"])
    assert 'security_driver = ["selinux", "apparmor"]\n' in new
    # replacing a list by a scalar
    new = set_key(ACTIVE_QEMU, "nvram", [])
    assert "nvram = []\ncgroup_device_acl" in new


def test_set_key_after_commented_default():
    new = set_key(QEMU_CONF, "user", "+0")
    assert '#user = "libvirt-qemu"\nuser = "+0"\n\n# The group' in new
    # the doc examples '#       user = "qemu"' are not mistaken for the default
    assert new.count('user = "+0"\n') == 1
    new = set_key(QEMU_CONF, "vnc_listen", "0.0.0.0")
    assert '#vnc_listen = "0.0.0.0"\nvnc_listen = "0.0.0.0"\n' in new
    new = set_key(LIBVIRTD_CONF, "listen_tcp", True)
    assert "#listen_tcp = 1\nlisten_tcp = 1\n" in new
    assert parse(new).get("listen_tcp") == 1


def test_set_key_after_commented_multiline_list():
    new = set_key(QEMU_CONF, "nvram", NVRAM)
    assert (
        '#   "/usr/share/AAVMF/AAVMF32_CODE.fd:/usr/share/AAVMF/AAVMF32_VARS.fd"\n'
        "#]\n"
        'nvram = ["/usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd", '
    ) in new
    assert parse(new).get("nvram") == NVRAM
    new = set_key(LIBVIRT_CONF, "uri_default", "qemu:///system")
    assert new.endswith('#uri_default = "qemu:///system"\nuri_default = "qemu:///system"\n')


def test_set_key_commented_last_line_without_newline():
    text = "# header\n#log_level = 3"
    assert set_key(text, "log_level", 1) == "# header\n#log_level = 3\nlog_level = 1\n"


def test_set_key_append():
    new = set_key(LIBVIRTD_CONF, "admin_max_clients", 5)
    assert new == LIBVIRTD_CONF + "admin_max_clients = 5\n"
    assert set_key("a = 1", "b", "x") == 'a = 1\nb = "x"\n'
    assert set_key("", "b", [1, 2]) == "b = [1, 2]\n"
    assert set_key("a = 1\r\n", "b", 2) == "a = 1\r\nb = 2\r\n"


def test_set_key_idempotent():
    assert set_key(LIBVIRTD_CONF, "listen_tls", 0) == LIBVIRTD_CONF
    assert set_key(LIBVIRTD_CONF, "listen_tls", False) == LIBVIRTD_CONF
    assert set_key(ACTIVE_QEMU, "nvram", NVRAM) == ACTIVE_QEMU
    assert set_key(ACTIVE_QEMU, "user", "+0") == ACTIVE_QEMU
    once = set_key(QEMU_CONF, "user", "qemu")
    assert set_key(once, "user", "qemu") == once
    # but type matters: the string "0" is not the integer 0
    assert 'listen_tls = "0"' in set_key(LIBVIRTD_CONF, "listen_tls", "0")


def test_set_key_duplicates_sets_every_assignment():
    text = "log_level = 3\n# again\nlog_level = 1\n"
    new = set_key(text, "log_level", 2)
    assert new == "log_level = 2\n# again\nlog_level = 2\n"


def test_set_key_semicolon_statements():
    new = set_key("a = 1; b = 2 # c\n", "a", "x")
    assert new == 'a = "x"; b = 2 # c\n'


def test_set_key_rejects_bad_input():
    with pytest.raises(ValueError):
        set_key("", "log.level", 1)
    with pytest.raises(ValueError):
        set_key("", "_x", 1)
    with pytest.raises(TypeError):
        set_key("", "x", None)
    with pytest.raises(ConfError):
        set_key('a = "broken\n', "b", 1)
    with pytest.raises(ValueError):
        set_key("a = 1\n", "b", "both ' and \"")


# --- remove_key --------------------------------------------------------------------


def test_remove_key_single_line_keeps_comments():
    new = remove_key(LIBVIRTD_CONF, "listen_tls")
    assert "listen_tls" not in parse(new)
    assert "# This is enabled by default, uncomment this to disable it\n\n# Listen" in new
    assert new == LIBVIRTD_CONF.replace("listen_tls = 0\n", "")


def test_remove_key_multiline_and_trailing_comment():
    new = remove_key(ACTIVE_QEMU, "nvram")
    assert 'security_driver = [ "apparmor" ]\ncgroup_device_acl = [\n' in new
    new = remove_key(new, "remote_display_port_min")
    assert new.endswith('    "/dev/ptmx", "/dev/kvm",\n]\n')
    assert "trailing comment" not in new
    assert parse(new).keys() == [
        "user", "group", "dynamic_ownership", "security_driver", "cgroup_device_acl",
    ]


def test_remove_key_shared_line_and_duplicates():
    assert remove_key("a = 1; b = 2\n", "a") == "b = 2\n"
    assert remove_key("a = 1; b = 2 # c\n", "b") == "a = 1\n"
    assert remove_key("x = 0; a = 1; b = 2\n", "a") == "x = 0; b = 2\n"
    assert remove_key("a = 1\n# keep\na = 2\n", "a") == "# keep\n"
    assert remove_key("a = 1\n\n", "a") == ""  # blank-only would be invalid
    assert remove_key(LIBVIRTD_CONF, "not_there") == LIBVIRTD_CONF


# --- property-style round trip -----------------------------------------------------

_KEY_CHARS = string.ascii_letters + string.digits + "_"
_STR_CHARS = string.ascii_letters + string.digits + " _-+:/.,=@#;[]\\'\"\t"


def _rand_key(rng: random.Random) -> str:
    return rng.choice(string.ascii_letters) + "".join(
        rng.choice(_KEY_CHARS) for _ in range(rng.randint(0, 12))
    )


def _rand_str(rng: random.Random) -> str:
    while True:
        s = "".join(rng.choice(_STR_CHARS) for _ in range(rng.randint(0, 20)))
        if rng.random() < 0.1:
            s += "\nsecond line"
        try:
            render_value(s)
        except ValueError:
            continue  # not representable in libvirt syntax (no escapes)
        return s


def _rand_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if r < 0.3:
        return _rand_str(rng)
    if r < 0.55:
        return rng.randint(-(2**40), 2**40)
    if r < 0.7:
        return rng.choice([True, False])
    if depth < 2:
        return [_rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.randint(0, 1)


def _plain(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


@pytest.mark.parametrize("seed", range(4))
def test_set_key_round_trip_property(seed):
    rng = random.Random(seed)
    bases = [QEMU_CONF, LIBVIRTD_CONF, LIBVIRT_CONF, ACTIVE_QEMU, "", "a = 1"]
    for _ in range(150):
        text = rng.choice(bases)
        before = parse(text)
        for _ in range(rng.randint(1, 4)):
            existing = before.keys() + before.commented_keys()
            key = rng.choice(existing) if existing and rng.random() < 0.6 else _rand_key(rng)
            value = _rand_value(rng)
            new = set_key(text, key, value)
            after = parse(new)
            assert after.get(key) == _plain(value), (text, key, value)
            for k in before.keys():
                if k != key:
                    assert after.get(k) == before.get(k)
                    assert after.type_of(k) == before.type_of(k)
            assert set(after.keys()) == set(before.keys()) | {key}
            # comments are never lost
            assert len(after.comments) == len(before.comments)
            assert set_key(new, key, value) == new
            removed = remove_key(new, key)
            gone = parse(removed)
            assert key not in gone
            assert all(gone.get(k) == after.get(k) for k in gone.keys())
            text, before = new, after


def test_parse_render_round_trip_many_values():
    rng = random.Random(1234)
    for _ in range(500):
        value = _rand_value(rng)
        conf = parse(f"k = {render_value(value)}\n")
        assert conf.get("k") == _plain(value)


# --- the real files on this host, when present -----------------------------------

_REAL = {
    "/etc/libvirt/qemu.conf": ["user", "group", "vnc_listen", "nvram", "security_driver"],
    "/etc/libvirt/libvirtd.conf": ["listen_tls", "listen_tcp", "unix_sock_group", "log_outputs"],
    "/etc/libvirt/libvirt.conf": ["uri_aliases", "uri_default"],
    "/etc/libvirt/virtqemud.conf": ["log_outputs", "unix_sock_group"],
}


@pytest.mark.parametrize("path", sorted(_REAL))
def test_real_host_file(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not present")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except PermissionError:
        pytest.skip(f"{path} not readable")
    conf = parse(text, path)
    known = set(conf.keys()) | set(conf.commented_keys())
    for key in _REAL[path]:
        assert key in known, key
    for key in conf.keys():
        assert conf.line_of(key) >= 1
    # editing the real file round-trips and keeps every comment
    key = _REAL[path][0]
    new = set_key(text, key, "virtdoctor-test" if key != "uri_aliases" else ["x=test:///default"])
    after = parse(new, path)
    assert len(after.comments) == len(conf.comments)
    for k in conf.keys():
        if k != key:
            assert after.get(k) == conf.get(k)
