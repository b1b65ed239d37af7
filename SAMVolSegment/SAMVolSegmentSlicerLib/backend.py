"""Where the model runs: this computer (local engine) or a ``samvolseg serve`` machine (``RemoteSession``).

The choice, the server URL and the CA/certificate file are user preferences kept in ``QSettings`` (never in
the scene: a scene file travels, and the server is a property of the computer, not of the data). The token is
a secret: it is written to ``QSettings`` only when the user ticks *Remember token* (Slicer's settings file is
plain text), otherwise it lives in memory for the Slicer session. Neither is ever stored in the parameter node.

Functions take the settings object as an argument (``qt.QSettings()`` in Slicer), so this file imports neither
Qt nor Slicer and is tested with pytest. Slicer camelCase, as the other MRML/Qt-facing helpers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

LOCAL = "local"
REMOTE = "remote"
#: Combo-box entries (value, label), in order.
BACKEND_CHOICES = ((LOCAL, "Local model (this computer)"), (REMOTE, "Remote server (samvolseg serve)"))
#: Registry names of SAMVolSegmentLib.model.registry, in combo-box order; the last entry is "a file".
MODEL_CHOICES = (("default", "Bundled default (offline)"), ("sam-med3d-turbo", "SAM-Med3D-turbo (download, 402 MB)"),
                 ("file", "From file..."))
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

#: QSettings keys and defaults (user preferences; scene state lives in the parameter node).
SETTINGS_PREFIX = "SAMVolSegment/"
SETTING_DEFAULTS = {"model": "default", "modelPath": "", "device": "auto", "threads": "auto", "backend": LOCAL,
                    "serverURL": "", "serverCAFile": "", "rememberServerToken": False}
TOKEN_KEY = SETTINGS_PREFIX + "serverToken"


@dataclass(frozen=True)
class Backend:
    """One backend choice. ``token`` is excluded from ``repr`` so it never reaches a log or a traceback."""

    kind: str = LOCAL
    url: str = ""
    token: str = field(default="", repr=False)
    caFile: str = ""

    @property
    def isRemote(self) -> bool:
        return self.kind == REMOTE

    @property
    def verify(self) -> Union[bool, str]:
        """``RemoteSession(verify=...)``: the chosen CA bundle / server certificate, else the system's CAs.

        Never False: an unverified HTTPS connection lets anyone on the path read the images.
        """
        return self.caFile or True

    def sessionKey(self, source: str, device: str, threads: str = "auto") -> Tuple[str, ...]:
        """What identifies a session: a new one is needed when this changes (a server has its own model and
        threads)."""
        if self.isRemote:
            return (REMOTE, self.url, self.token, self.caFile)
        return (LOCAL, str(source), str(device), str(threads))

    def describe(self) -> str:
        return f"server {self.url}" if self.isRemote else "this computer"


def _asBool(value: Any) -> bool:
    """A bool read back from QSettings: after a restart the .ini gives the string "true"/"false" (the case
    ``slicer.util.toBool`` handles in Base/Python/slicer/util.py)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _value(settings: Any, name: str) -> Any:
    # settings.contains() first, as slicer.util.settingsValue does: a missing key gives our default.
    key = SETTINGS_PREFIX + name
    return settings.value(key) if settings.contains(key) else SETTING_DEFAULTS[name]


def loadPreferences(settings: Any) -> Dict[str, Any]:
    """Model, device and backend preferences (without the token), each with its default when unset."""
    prefs = {name: _value(settings, name) for name in SETTING_DEFAULTS}
    prefs["rememberServerToken"] = _asBool(prefs["rememberServerToken"])
    if prefs["backend"] not in (LOCAL, REMOTE):
        prefs["backend"] = LOCAL
    return prefs


def loadRememberedToken(settings: Any) -> str:
    """The stored token when the user asked to remember it, else ""."""
    if not _asBool(_value(settings, "rememberServerToken")) or not settings.contains(TOKEN_KEY):
        return ""
    return str(settings.value(TOKEN_KEY) or "")


def savePreferences(settings: Any, model: str, modelPath: str, device: str, threads: str = "auto") -> None:
    settings.setValue(SETTINGS_PREFIX + "model", model)
    settings.setValue(SETTINGS_PREFIX + "modelPath", modelPath)
    settings.setValue(SETTINGS_PREFIX + "device", device)
    settings.setValue(SETTINGS_PREFIX + "threads", threads)


def saveBackend(settings: Any, backend: Backend, rememberToken: bool) -> None:
    """Store the backend choice; the token only with ``rememberToken`` (else any stored one is removed)."""
    settings.setValue(SETTINGS_PREFIX + "backend", backend.kind)
    settings.setValue(SETTINGS_PREFIX + "serverURL", backend.url)
    settings.setValue(SETTINGS_PREFIX + "serverCAFile", backend.caFile)
    settings.setValue(SETTINGS_PREFIX + "rememberServerToken", bool(rememberToken))
    if rememberToken and backend.token:
        settings.setValue(TOKEN_KEY, backend.token)
    else:
        settings.remove(TOKEN_KEY)


# ---------------------------------------------------------------------------------------------- sessions
#: Where to fix a failed TLS connection in this module, by ``TLSError.cause``.
TLS_HINTS = {
    "untrusted": ("In Model and settings > CA / certificate, choose the server's certificate (e.g. cert.pem) or "
                  "your institution's CA bundle."),
    "hostname": ("The certificate does not name the host in the URL: in Model and settings, use the host name the "
                 "certificate was made for (samvolseg serve --self-signed covers localhost, this host and every --san)."),
    "expired": "The server's certificate has expired: ask its administrator to renew it, then Test connection.",
    "use-https": "The server speaks HTTPS: in Model and settings, change the URL to https://.",
    "use-http": "The server has no TLS: in Model and settings, change the URL to http://.",
    "other": ("In Model and settings > CA / certificate, choose the server's certificate (e.g. cert.pem) or "
              "your institution's CA bundle; for a server without TLS use an http:// URL."),
}


def _explain(exc: Exception, backend: Backend) -> str:
    """The client's message plus where to fix it in this module (the client names its Python arguments)."""
    from SAMVolSegmentLib.errors import AuthenticationError, ProtocolMismatchError, TLSError

    text = str(exc)
    if isinstance(exc, AuthenticationError):
        hint = ("Enter the server's token (the value of its --token / --token-file) in Model and settings > "
                "Token, then Test connection.")
    elif isinstance(exc, TLSError):
        hint = TLS_HINTS.get(exc.cause, TLS_HINTS["untrusted"])
    elif isinstance(exc, ProtocolMismatchError):
        hint = "Update the SAMVolSegment extension or the server so both run the same version."
    else:
        hint = f"Check the URL ({backend.url}) in Model and settings, then Test connection."
    return f"{text}\n{hint}"


def _checkRemote(backend: Backend) -> None:
    if not backend.url.strip():
        raise ValueError("Enter the server URL (e.g. https://gpu-box:8765) in Model and settings, or choose "
                         "the local model.")
    if backend.caFile and not os.path.isfile(backend.caFile):
        raise ValueError(f"The CA / certificate file {backend.caFile} does not exist; choose the server's "
                         "certificate (.pem) or clear the field to use the system's trusted CAs.")


def remoteSession(backend: Backend, progress: Optional[Callable[[float, str], None]] = None):
    """A ``RemoteSession`` on ``backend`` (it checks the connection and the token before returning).

    Raises:
        ValueError: no URL, or the CA file does not exist.
        SAMVolSegmentLib.errors.RemoteError: unreachable, wrong token, TLS or version mismatch; the message
            says where to fix it in the module.
    """
    _checkRemote(backend)
    # The client module only: SAMVolSegmentLib.remote.server needs FastAPI, which Slicer does not have.
    from SAMVolSegmentLib.errors import RemoteError
    from SAMVolSegmentLib.remote.client import RemoteSession

    try:
        return RemoteSession(backend.url.strip(), token=backend.token or None, verify=backend.verify,
                             progress=progress)
    except RemoteError as exc:
        raise type(exc)(_explain(exc, backend)) from None


def sessionFactory(backend: Backend, localFactory: Callable[..., Any]) -> Callable[..., Any]:
    """``factory(source, device, download, progress) -> session`` for ``backend``.

    A server runs its own model on its own device, so ``source``, ``device`` and ``download`` apply to the
    local model only.
    """
    if not backend.isRemote:
        return localFactory

    def factory(source, device, download, progress):
        return remoteSession(backend, progress)

    return factory


def testConnection(backend: Backend) -> str:
    """Reachable, same protocol, token accepted: a one-line summary of the server; raises as ``remoteSession``."""
    session = remoteSession(backend)
    try:
        info = session.info
    finally:
        session.close()
    auth = "token accepted" if info.get("auth_required") else "no token required"
    return (f"Connected to {session.url}: model {info.get('model_id', '?')} on {info.get('device', '?')}, "
            f"protocol {info.get('protocol', '?')}, {auth}.")
