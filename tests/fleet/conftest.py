"""Fleet tests: virtdoctor through the engines operators already run (node_exporter and
Prometheus's promtool, Ansible). They run the real tools, which scripts/host-setup.sh
installs; a missing tool skips the test, or fails it under VIRTDOCTOR_REQUIRE_LIVE=1
(what `make test` sets after preparing the host)."""
from __future__ import annotations

import os
import shutil
import socket

import pytest


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (scripts/host-setup.sh installs it)"
        if os.environ.get("VIRTDOCTOR_REQUIRE_LIVE", "") not in ("", "0"):
            pytest.fail(f"VIRTDOCTOR_REQUIRE_LIVE=1 but {msg}", pytrace=False)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
