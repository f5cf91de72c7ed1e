"""plugins.py: the manager (built-ins, entry points, autoload off), broken plugins are
warnings, check collection and knowledge directories."""
from __future__ import annotations

import io
import textwrap

import pluggy
import pytest

from virtdoctor import hookspecs
from virtdoctor.checkdef import Check
from virtdoctor.checks import BUILTIN_PLUGINS
from virtdoctor.model import ToolError
from virtdoctor.plugins import build_manager, collect_checks, key, knowledge_dirs

GOOD_PLUGIN = '''
from virtdoctor.api import Pass, check, hookimpl

@check("vdplug-ok", scope="host", area="plugged", title="a plugin check")
def vdplug_ok(facts):
    """Looks at nothing."""
    return Pass("plugged in")

@check("vdplug-ok", scope="domain", area="plugged", title="a plugin domain check")
def vdplug_ok_dom(facts, dom):
    return Pass()

@hookimpl
def virtdoctor_checks():
    return [vdplug_ok, vdplug_ok_dom]

@hookimpl
def virtdoctor_knowledge_dirs():
    import pathlib
    return [pathlib.Path(__file__).parent / "kb"]
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path where tests drop modules and dist-info entry points."""
    d = tmp_path / "site"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))

    def add(dist: str, entry_points: dict[str, str], modules: dict[str, str] = {}):
        for mod, src in modules.items():
            (d / f"{mod}.py").write_text(textwrap.dedent(src))
        info = d / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[virtdoctor]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return add


def test_builtins_are_registered_in_order_without_autoload():
    pm = build_manager(autoload=False)
    names = [n for n, _ in pm.list_name_plugin()]
    for name in BUILTIN_PLUGINS:
        assert pm.has_plugin(name)
    assert [n for n in names if n in BUILTIN_PLUGINS] == list(BUILTIN_PLUGINS)
    registry = collect_checks(pm)
    assert registry, "the built-in modules provide checks"
    assert all(isinstance(c, Check) for c in registry.values())
    for k, c in registry.items():
        assert k == key(c)
        assert c.plugin.startswith("virtdoctor.checks.")
    assert "daemon-socket-missing" in registry and "kvm-device-permission" in registry


def test_key_separates_domain_twins():
    from virtdoctor.checkdef import check

    host = check("same-slug", scope="host", area="a", title="t")(lambda f: None)
    dom = check("same-slug", scope="domain", area="a", title="t")(lambda f, d: None)
    uri = check("same-slug", scope="uri", area="a", title="t")(lambda f: None)
    assert (key(host), key(dom), key(uri)) == ("same-slug", "same-slug@domain", "same-slug")


def test_entry_point_plugin_is_loaded_after_builtins(site):
    site("vdplug", {"vdplug": "vdplug_mod"}, {"vdplug_mod": GOOD_PLUGIN})
    warn = io.StringIO()
    pm = build_manager(warn=warn)
    assert pm.has_plugin("vdplug") and warn.getvalue() == ""
    registry = collect_checks(pm)
    assert list(registry)[-2:] == ["vdplug-ok", "vdplug-ok@domain"]
    assert registry["vdplug-ok"].plugin == "vdplug_mod"
    assert not build_manager(autoload=False).has_plugin("vdplug")


def test_broken_entry_point_is_a_warning(site):
    site("vdbroken", {"vdbroken": "vd_no_such_module_xyz", "vdraises": "vdraises_mod"},
         {"vdraises_mod": "raise RuntimeError('plugin exploded at import')\n"})
    site("vdgood", {"vdgood": "vdgood_mod"}, {"vdgood_mod": GOOD_PLUGIN})
    warn = io.StringIO()
    pm = build_manager(warn=warn)
    text = warn.getvalue()
    assert "plugin 'vdbroken' (vd_no_such_module_xyz) failed to load: ModuleNotFoundError" in text
    assert "plugin 'vdraises' (vdraises_mod) failed to load: RuntimeError: plugin exploded at import" in text
    assert len(text.splitlines()) == 2
    assert pm.has_plugin("vdgood") and not pm.has_plugin("vdbroken")
    assert "vdplug-ok" in collect_checks(pm)


def test_misspelt_hook_in_a_plugin_is_a_warning_and_the_plugin_is_dropped(site):
    site("vdtypo", {"vdtypo": "vdtypo_mod"}, {"vdtypo_mod": '''
        from virtdoctor.api import hookimpl

        @hookimpl
        def virtdoctor_check():   # misspelt: the hook is virtdoctor_checks
            return []
        '''})
    warn = io.StringIO()
    pm = build_manager(warn=warn)
    assert "vdtypo" in warn.getvalue() and "virtdoctor_check" in warn.getvalue()
    assert not pm.has_plugin("vdtypo")
    assert "daemon-socket-missing" in collect_checks(pm)


def test_misspelt_hook_in_a_builtin_fails_loudly(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("vd_builtin_typo")
    exec("from virtdoctor.api import hookimpl\n@hookimpl\ndef virtdoctor_chekcs():\n    return []\n", mod.__dict__)
    monkeypatch.setitem(sys.modules, "vd_builtin_typo", mod)
    monkeypatch.setattr("virtdoctor.checks.BUILTIN_PLUGINS", BUILTIN_PLUGINS + ("vd_builtin_typo",))
    with pytest.raises(pluggy.PluginValidationError):
        build_manager(autoload=False)


def test_plugin_whose_hook_raises_is_a_warning(site):
    site("vdhookfail", {"vdhookfail": "vdhookfail_mod"}, {"vdhookfail_mod": '''
        from virtdoctor.api import hookimpl

        @hookimpl
        def virtdoctor_checks():
            raise OSError("cannot list")
        '''})
    site("vdnotcheck", {"vdnotcheck": "vdnotcheck_mod"}, {"vdnotcheck_mod": '''
        from virtdoctor.api import hookimpl

        @hookimpl
        def virtdoctor_checks():
            return ["not a check"]
        '''})
    warn = io.StringIO()
    pm = build_manager(warn=warn)
    registry = collect_checks(pm, warn=warn)
    text = warn.getvalue()
    assert "plugin vdhookfail failed to list its checks: OSError: cannot list" in text
    assert "plugin vdnotcheck returned 'not a check', not a @check" in text
    assert "daemon-socket-missing" in registry


def test_builtin_whose_hook_raises_is_a_tool_error():
    class Broken:
        @hookspecs.hookimpl
        def virtdoctor_checks(self):
            raise OSError("boom")

    pm = build_manager(autoload=False)
    pm.unregister(name=BUILTIN_PLUGINS[0])
    pm.register(Broken(), name=BUILTIN_PLUGINS[0])
    with pytest.raises(ToolError, match="failed to list its checks"):
        collect_checks(pm)


def test_knowledge_dirs_in_registration_order(tmp_path):
    class KB:
        def __init__(self, path):
            self.path = path

        @hookspecs.hookimpl
        def virtdoctor_knowledge_dirs(self):
            return [self.path]

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(KB(tmp_path / "first"), name="first")
    pm.register(KB(tmp_path / "second"), name="second")
    assert knowledge_dirs(pm) == [tmp_path / "first", tmp_path / "second"]


def test_builtin_knowledge_dir_comes_first(site):
    pytest.importorskip("virtdoctor.knowledge")
    site("vdkb", {"vdkb": "vdkb_mod"}, {"vdkb_mod": GOOD_PLUGIN})
    dirs = knowledge_dirs(build_manager())
    assert dirs[0].name == "knowledge_data" or (dirs[0] / "kvm-device-permission.toml").exists()
    assert dirs[-1].name == "kb"
