"""``samvolseg serve --self-signed``: a TLS certificate for the names a server is reached by.

The certificate names ``localhost``, ``127.0.0.1``, ``::1``, this host's name (short and fully qualified), the
``--host`` address when it is a specific one, and every ``--san`` name, so the same file works for a client on
the server itself and for clients on other machines. It is kept in a folder (default
``$SAMVOLSEG_CACHE/tls``, i.e. ``~/.cache/samvolsegment/tls``) and reused while it covers the names asked for and
is valid for at least 30 more days: clients that trust it keep trusting it across server restarts. Clients
trust it by the file itself: ``--ca-file cert.pem`` (CLI), ``verify="cert.pem"`` (``RemoteSession``), or the
Slicer module's CA / certificate file.

Needs the ``cryptography`` package (part of ``pip install 'samvolsegment[server]'``); the client never does.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from ..errors import ServerConfigError

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
#: Days a new certificate is valid (825: the longest that Apple's TLS clients accept for a server certificate).
VALID_DAYS = 825
#: A certificate valid for fewer days than this is replaced by a new one.
RENEW_DAYS = 30


@dataclass(frozen=True)
class SelfSignedCertificate:
    """Where the certificate and its key are, the names it covers, and whether it was made just now."""

    cert_path: Path
    key_path: Path
    names: Tuple[str, ...]
    created: bool


def default_tls_dir() -> Path:
    """``$SAMVOLSEG_CACHE/tls`` (default ``~/.cache/samvolsegment/tls``)."""
    from ..download import cache_root

    return cache_root() / "tls"


def server_names(host: str, extra: Iterable[str] = ()) -> List[str]:
    """The names a server bound to ``host`` is reached by, in a stable order, without duplicates.

    ``localhost``, ``127.0.0.1`` and ``::1`` always; this machine's host name and fully qualified name; ``host``
    itself unless it is a wildcard (``0.0.0.0``, ``::``); then ``extra`` (the ``--san`` names).
    """
    names = ["localhost", "127.0.0.1", "::1"]
    for name in (socket.gethostname(), _fqdn()):
        names.append(name)
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    names.extend(extra)
    seen: List[str] = []
    for name in names:
        name = name.strip().strip("[]").lower()
        if name and name not in seen:
            seen.append(name)
    return seen


def ensure_self_signed(folder: Path, names: Iterable[str]) -> SelfSignedCertificate:
    """The certificate in ``folder`` if it covers ``names`` and stays valid for :data:`RENEW_DAYS` days; else a
    new one (written atomically; the key readable by its owner only).

    Raises:
        ServerConfigError: ``cryptography`` is missing, a name is not a valid host name or IP address, or the
            folder cannot be written.
    """
    names = tuple(names)
    for name in names:
        _check_name(name)
    folder = Path(folder).expanduser()
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    existing = certificate_names(cert_path) if cert_path.is_file() and key_path.is_file() else None
    if existing is not None and set(names) <= set(existing[0]) and existing[1] > _now() + datetime.timedelta(
            days=RENEW_DAYS):
        return SelfSignedCertificate(cert_path, key_path, existing[0], created=False)
    cert_pem, key_pem = _make_certificate(names)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(key_path, key_pem, mode=0o600)
        _write_atomically(cert_path, cert_pem, mode=0o644)
    except OSError as exc:
        raise ServerConfigError(f"Cannot write the certificate into {folder}: {exc.strerror}; choose another folder "
                                "with --tls-dir.") from None
    return SelfSignedCertificate(cert_path, key_path, names, created=True)


def certificate_names(cert_path: Path) -> Optional[Tuple[Tuple[str, ...], datetime.datetime]]:
    """(names in the certificate's subjectAltName, end of validity in UTC), or None if unreadable."""
    try:
        from cryptography import x509
    except ImportError:
        return None
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    names = [str(n).lower() for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    end = getattr(cert, "not_valid_after_utc", None)
    if end is None:  # cryptography < 42
        end = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return tuple(names), end


def _make_certificate(names: Tuple[str, ...]) -> Tuple[bytes, bytes]:
    """(certificate PEM, key PEM): ECDSA P-256, self-signed, for ``names`` (DNS names and IP addresses)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise ServerConfigError("--self-signed needs the cryptography package: pip install 'samvolsegment[server]' "
                                "(or pip install cryptography), or give your own --ssl-certfile/--ssl-keyfile."
                                ) from None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "samvolseg serve --self-signed")])
    alt: list = []
    for name in names:
        ip = _as_ip(name)
        alt.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name))
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a client whose clock is a little behind
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # Its own trust anchor (clients trust this file): a CA that may sign nothing below it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _check_name(name: str) -> None:
    if _as_ip(name) is not None:
        return
    labels = name.split(".")
    if not name or len(name) > 253 or not all(
            label and len(label) <= 63 and all(c.isalnum() or c in "-*" for c in label) for label in labels):
        raise ServerConfigError(f"--san {name!r} is neither a host name nor an IP address; give the name or "
                                "address clients connect to (e.g. --san gpu-box.example.org --san 10.0.0.5).")


def _as_ip(name: str) -> Optional[ipaddress._BaseAddress]:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _fqdn() -> str:
    try:
        return socket.getfqdn()
    except OSError:
        return ""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(str(temporary), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(str(temporary), mode)
        os.replace(str(temporary), str(path))
    except BaseException:
        try:
            os.unlink(str(temporary))
        except OSError:
            pass
        raise
