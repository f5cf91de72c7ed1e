"""What the benchmarks share: the environment of a timed cold run."""
from __future__ import annotations

import os


def installed_like_pip() -> dict[str, str]:
    """Environment for the timed runs: bytecode of virtdoctor compiled once, as
    `pip install` leaves a package, and PYTHONDONTWRITEBYTECODE dropped (some
    shells set it), so "cold" means a fresh interpreter, not a recompile of
    every module on every run."""
    import compileall
    import virtdoctor

    compileall.compile_dir(os.path.dirname(virtdoctor.__file__), quiet=1)
    try:
        import virtdoctor.checks as builtin_checks

        compileall.compile_dir(os.path.dirname(builtin_checks.__file__), quiet=1)
    except ImportError:
        pass
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env
