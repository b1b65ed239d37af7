"""Checked, atomic, cached downloads: the one downloader of model weights (:mod:`.weights`) and sample cases
(:mod:`.samples`).

A file is streamed to a hidden temporary file beside its target, its size and SHA-256 are checked, and only
then is it renamed over the target name (``os.replace``), so an interrupted, truncated or wrong download never
leaves a file that looks complete. A target that is already there and passes the same checks is used without
touching the network. Nothing here runs unless a caller asks for a download.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from .errors import DownloadError

ProgressCallback = Callable[[float, str], None]
#: Environment variable naming the cache root (model weights under ``models/``, sample cases under ``samples/``).
CACHE_ENV = "SAMVOLSEG_CACHE"
_BLOCK = 1 << 20


def cache_root() -> Path:
    """``$SAMVOLSEG_CACHE``, else ``$XDG_CACHE_HOME/samvolsegment``, else ``~/.cache/samvolsegment``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "samvolsegment"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(path: Path, sha256: Optional[str] = None, size_bytes: Optional[int] = None) -> bool:
    """True when ``path`` is a file with the expected SHA-256 (if given), else the expected size (if given)."""
    if not path.is_file():
        return False
    if sha256 is not None:
        return sha256_of(path) == sha256.lower()
    return size_bytes is None or path.stat().st_size == size_bytes


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, as the offline message names it."""
    return urllib.parse.urlsplit(url).netloc or url


def download_file(
    url: str,
    target: Path,
    *,
    sha256: Optional[str] = None,
    size_bytes: Optional[int] = None,
    what: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    timeout: float = 30.0,
) -> Path:
    """``target`` with the content of ``url``: from the cache when already complete, else downloaded.

    Args:
        sha256: expected hex SHA-256 (checked after the transfer, and of a file already there).
        size_bytes: expected size; a server announcing another size is refused before the transfer.
        what: the file's name in messages and progress (default: the target's file name).
        progress: ``progress(fraction in [0, 1], message)`` per received block.
        timeout: seconds to wait for the server to connect or send.
    Raises:
        DownloadError: the server is unreachable (``unreachable`` True; one-line message ``cannot reach
            <host> (...)``), or it answered with an error, a different size or checksum.
    """
    target = Path(target)
    what = what or target.name
    if is_complete(target, sha256, size_bytes):
        return target
    host = host_of(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=str(target.parent))
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except urllib.error.HTTPError as exc:  # reached: the server refused or lacks the file
                raise DownloadError(f"{host} answered {exc.code} {exc.reason} for {url}.", host, False) from None
            except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"cannot reach {host} ({reason})", host, True) from None
            with response:
                _stream(response, out, url, host, what, sha256, size_bytes, progress)
        os.replace(str(tmp), str(target))
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _stream(response, out, url: str, host: str, what: str, sha256: Optional[str], size_bytes: Optional[int],
            progress: Optional[ProgressCallback]) -> None:
    """Copy the HTTP body to ``out`` in blocks, checking size and checksum."""
    announced = response.headers.get("Content-Length")
    if announced is not None and size_bytes is not None and int(announced) != size_bytes:
        # Refused before transferring what may be hundreds of MB of the wrong file.
        raise DownloadError(f"The server offers {int(announced):,} bytes for {what}, expected {size_bytes:,}; the "
                            f"file at {url} has changed.", host, False)
    total = size_bytes or int(announced or 0)
    digest = hashlib.sha256()
    done = 0
    while True:
        try:
            block = response.read(_BLOCK)
        except (socket.timeout, ConnectionError) as exc:  # the connection dropped mid-transfer
            raise DownloadError(f"cannot reach {host} (connection lost after {done:,} bytes: {exc})", host,
                                True) from None
        if not block:
            break
        out.write(block)
        digest.update(block)
        done += len(block)
        if progress is not None:
            progress(min(done / total, 1.0) if total else 0.0, f"{what}: {done / 2**20:.1f} MB")
    if size_bytes is not None and done != size_bytes:
        raise DownloadError(f"Download of {what} is incomplete or wrong ({done:,} of {size_bytes:,} bytes); try again.",
                            host, False)
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise DownloadError(f"Download of {what} from {url} has the wrong sha256 checksum ({digest.hexdigest()[:16]}... "
                            f"instead of {sha256[:16]}...); it was not kept.", host, False)
