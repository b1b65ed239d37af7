"""The engine's exception hierarchy.

Every error the engine raises on bad input derives from :class:`SAMVolSegmentError`, and its message names
the fix. Raising one never leaves a session, a cache or an output file half-changed.
"""

from __future__ import annotations


class SAMVolSegmentError(Exception):
    """Base class of every error raised deliberately by SAMVolSegmentLib."""


class InvalidImageError(SAMVolSegmentError, ValueError):
    """The image cannot be segmented as given (NaN/inf voxels, not 3D, empty/constant, bad spacing...)."""


class InvalidPromptError(SAMVolSegmentError, ValueError):
    """A click or box is unusable (outside the volume, not finite, wrong shape, empty box...)."""


class CheckpointError(SAMVolSegmentError):
    """A model file is corrupt, truncated, unsafe (pickled code) or of another architecture."""


class ModelNotAvailableError(SAMVolSegmentError):
    """A registered model is not on this machine and cannot be downloaded now (offline, no consent...)."""


class SessionStateError(SAMVolSegmentError, RuntimeError):
    """An operation came in the wrong order (e.g. a click before ``set_volume``)."""


class OutputPathError(SAMVolSegmentError, ValueError):
    """An output cannot be written where asked (it is the input, a folder, under a file, not writable...)."""


class RemoteError(SAMVolSegmentError):
    """A remote inference server could not do what was asked (base of the client's server errors)."""


class ServerUnavailableError(RemoteError, ConnectionError):
    """The server cannot be reached: refused, timed out, unknown host, or a TLS certificate not trusted."""


class TLSError(ServerUnavailableError):
    """TLS between client and server failed; the message names the cause and the option that fixes it.

    Attributes:
        cause: ``"untrusted"`` (certificate not trusted: pass the server's certificate), ``"hostname"`` (trusted,
            but it does not name the host in the URL), ``"expired"``, ``"use-https"`` (``http://`` sent to an
            HTTPS server), ``"use-http"`` (``https://`` sent to a plain HTTP server) or ``"other"``.
    """

    def __init__(self, message: str, cause: str = "other") -> None:
        super().__init__(message)
        self.cause = cause


class AuthenticationError(RemoteError, PermissionError):
    """The server refused the token (missing, wrong, or the server requires one)."""


class SessionExpiredError(RemoteError):
    """A server session expired (idle past its lease) or was evicted to free memory, and could not be restored."""


class ServerBusyError(RemoteError):
    """The server's work queue stayed full; try again in a moment or use a less busy server."""


class ProtocolMismatchError(RemoteError):
    """Client and server speak different protocol versions; update the older side."""


class ServerConfigError(RemoteError, ValueError):
    """A server cannot start as configured (no token on a non-loopback address, half a TLS key pair...)."""


class LabelMapWarning(UserWarning):
    """The image looks like a label map (few integer values), not a CT/MR image: probably the wrong file."""


class DownloadError(SAMVolSegmentError):
    """A download failed; nothing was kept under the target name.

    Attributes:
        host: the server's ``host[:port]``.
        unreachable: True when the server could not be reached at all (offline, refused, timed out, unknown
            host); False when it answered but the file was missing or not the expected one.
    """

    def __init__(self, message: str, host: str, unreachable: bool) -> None:
        super().__init__(message)
        self.host = host
        self.unreachable = unreachable


class UnknownSampleError(SAMVolSegmentError, ValueError):
    """No registered sample has this name."""


class StopRequested(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) received while work runs, raised so that the work unwinds like a Ctrl-C:
    worker processes are stopped and temporary files removed. Not an :class:`Exception` (nothing that catches
    a case's errors may swallow it).

    Attributes:
        signum: the signal's number (the program exits with ``128 + signum``).
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = int(signum)
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(name)
        self.name = name
