"""Remote inference: ``samvolseg serve`` (a FastAPI server around the engine) and ``RemoteSession`` (its client).

``RemoteSession`` implements :class:`~SAMVolSegmentLib.engine.session_protocol.SegmentationSession`, so the Slicer
module, the CLI and batch code use a server exactly as they use a local ``InteractiveSession``::

    from SAMVolSegmentLib.remote import RemoteSession
    session = RemoteSession("https://gpu-box:8765", token="...", verify="server-cert.pem")
    session.set_volume(sitk_image)          # uploaded once per volume content
    update = session.add_click((x, y, z))   # the reply carries only the changed box

The client needs ``requests`` (``pip install 'samvolsegment[client]'``), the server FastAPI and uvicorn
(``[server]``). Importing this package imports neither; the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .protocol import PROTOCOL_VERSION

_LAZY = {
    "RemoteBackend": ".client",
    "RemoteSession": ".client",
    "RemoteClick": ".client",
    "ServerConfig": ".server",
    "create_app": ".server",
}

__all__ = ["PROTOCOL_VERSION", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
