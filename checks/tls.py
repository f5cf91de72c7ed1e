"""Checks of this area are being written (see checks/__init__.py)."""
from virtdoctor.api import hookimpl


@hookimpl
def virtdoctor_checks():
    return []
