"""``samvolseg serve``: run the inference server (registered by :func:`register_cli`).

Safe defaults: binds 127.0.0.1; any other address needs a token (``--token-file`` or the
``SAMVOLSEG_SERVER_TOKEN`` variable keep it out of the process list, unlike ``--token``); TLS with
``--ssl-certfile``/``--ssl-keyfile``, or ``--self-signed`` (:mod:`.tls`: a certificate for the names it serves).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

from ..cli.common import add_threads
from ..errors import ServerConfigError
from .protocol import is_loopback_host

DEFAULT_PORT = 8765
TOKEN_ENV = "SAMVOLSEG_SERVER_TOKEN"
MIN_TOKEN_CHARS = 16
TOKEN_HINT = "make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\""


def register_cli(subparsers) -> None:
    """Add the ``serve`` subcommand to ``samvolseg``'s subparsers."""
    p = subparsers.add_parser(
        "serve", help="serve a model to remote clients (Slicer, RemoteSession) over HTTP(S)",
        description="Run the inference server: clients upload each volume once and send clicks as small JSON "
                    "requests; replies carry only the changed part of the mask. Binds 127.0.0.1 unless --host "
                    "says otherwise; any other address needs a token. Needs: pip install 'samvolsegment[server]'.")
    p.add_argument("--model", default="default", help="registry name (samvolseg models list) or checkpoint path")
    p.add_argument("--device", default=argparse.SUPPRESS,
                   help="torch device: cpu (default), cuda, cuda:1, mps; also accepted before the subcommand")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface, needs "
                        "a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port")
    p.add_argument("--token", default=None,
                   help=f"bearer token clients must send (visible in the process list: prefer --token-file or "
                        f"${TOKEN_ENV}); at least {MIN_TOKEN_CHARS} characters")
    p.add_argument("--token-file", type=Path, default=None, help="file whose first line is the token")
    p.add_argument("--ssl-certfile", type=Path, default=None, help="TLS certificate (PEM); enables HTTPS")
    p.add_argument("--ssl-keyfile", type=Path, default=None, help="TLS private key (PEM) of --ssl-certfile")
    p.add_argument("--self-signed", action="store_true",
                   help="HTTPS with a certificate made (and then reused) for localhost, 127.0.0.1, this host's name, "
                        "--host and every --san; prints where it is and how clients trust it (--ca-file)")
    p.add_argument("--san", action="append", default=[], metavar="NAME",
                   help="with --self-signed: another host name or IP address clients connect to (repeatable), "
                        "e.g. the server's DNS name or its address behind a NAT")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help="with --self-signed: folder of cert.pem and key.pem (default ~/.cache/samvolsegment/tls)")
    p.add_argument("--lease-minutes", type=float, default=30.0,
                   help="a session idle this long expires (the client restores it by itself)")
    p.add_argument("--max-memory-gb", type=float, default=8.0,
                   help="memory for uploaded volumes and sessions; least recently used go first")
    p.add_argument("--cache-gb", type=float, default=2.0, help="memory for cached image embeddings")
    p.add_argument("--history-mb", type=float, default=64.0,
                   help="undo history of each session (mask boxes and the model's logits of each step; about "
                        "1 MB per click); counted in --max-memory-gb")
    p.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest compressed volume upload")
    p.add_argument("--max-voxels", type=int, default=512 * 512 * 1024, help="largest volume, in voxels")
    p.add_argument("--queue", type=int, default=32, help="requests that may wait for the model; more get 503")
    add_threads(p)
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                   help="server log level")
    p.set_defaults(func=cmd_serve)


def resolve_token(token: Optional[str], token_file: Optional[Path]) -> Optional[str]:
    """The token from --token, --token-file or the environment (in that order), checked.

    Raises:
        ServerConfigError: both options given, an unreadable or empty file, or a token that is too short.
    """
    if token is not None and token_file is not None:
        raise ServerConfigError("Give --token or --token-file, not both.")
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ServerConfigError(f"Cannot read --token-file {token_file}: {exc.strerror}.") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ServerConfigError(f"--token-file {token_file} is empty; write the token on its first line "
                                    f"({TOKEN_HINT}).")
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None:
        token = token.strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise ServerConfigError(f"The token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                                    f"({TOKEN_HINT}).")
    return token


def check_serve_options(args: argparse.Namespace) -> Optional[str]:
    """Validate the options before any model is loaded; the token.

    Raises:
        ServerConfigError: the message says which option to fix.
    """
    token = resolve_token(args.token, args.token_file)
    if token is None and not is_loopback_host(args.host):
        raise ServerConfigError(f"--host {args.host} lets other machines connect: give a token with --token-file, "
                                f"--token or ${TOKEN_ENV} ({TOKEN_HINT}), or bind 127.0.0.1.")
    if args.self_signed and (args.ssl_certfile is not None or args.ssl_keyfile is not None):
        raise ServerConfigError("Give --self-signed or --ssl-certfile/--ssl-keyfile, not both.")
    if not args.self_signed and (args.san or args.tls_dir is not None):
        raise ServerConfigError("--san and --tls-dir describe the certificate of --self-signed: add --self-signed "
                                "(or drop them and give --ssl-certfile/--ssl-keyfile).")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ServerConfigError("TLS needs both --ssl-certfile and --ssl-keyfile.")
    for name, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path is not None and not path.is_file():
            raise ServerConfigError(f"{name} {path} is not a file.")
    if args.ssl_certfile is not None:
        check_key_pair(args.ssl_certfile, args.ssl_keyfile)
    if not 0 < args.port < 65536:
        raise ServerConfigError(f"--port {args.port} is not a TCP port (1-65535).")
    for name in ("lease_minutes", "max_memory_gb", "cache_gb", "max_upload_mb", "max_voxels", "queue"):
        if not getattr(args, name) > 0:
            raise ServerConfigError(f"--{name.replace('_', '-')} must be positive.")
    return token


def self_signed_files(args: argparse.Namespace) -> Tuple[Path, Path]:
    """``--self-signed``: make or reuse the certificate, print where it is and how clients trust it.

    Raises:
        ServerConfigError: cryptography missing, a bad ``--san``, or an unwritable ``--tls-dir``.
    """
    from .tls import default_tls_dir, ensure_self_signed, server_names

    cert = ensure_self_signed(args.tls_dir or default_tls_dir(), server_names(args.host, args.san))
    state = "made" if cert.created else "reused"
    print(f"TLS certificate {state}: {cert.cert_path} (key {cert.key_path}), for {', '.join(cert.names)}")
    if cert.created:
        print("  a new certificate: clients that trusted an earlier one need this one (copy it to them again)")
    # The example URL: the first --san (the name remote clients were said to use), else this host's name.
    sans = [n.strip().strip("[]").lower() for n in args.san]
    others = [n for n in cert.names if n not in ("localhost", "127.0.0.1", "::1")]
    name = (sans or others or ["localhost"])[0]
    host = f"[{name}]" if ":" in name else name
    print(f"  copy {cert.cert_path} to each client (it is public; never the key), then trust it there:\n"
          f"    samvolseg segment ... --server https://{host}:{args.port} --token-file token.txt --ca-file cert.pem\n"
          f"    RemoteSession(\"https://{host}:{args.port}\", token=..., verify=\"cert.pem\")\n"
          "    Slicer: Run on: remote server, CA / certificate file: cert.pem\n"
          "  a client reaching this machine by another name or address: restart with --san NAME")
    return cert.cert_path, cert.key_path


def check_key_pair(certfile: Path, keyfile: Path) -> None:
    """Load the TLS certificate and key as the server will, before anything is served.

    Raises:
        ServerConfigError: a file is not PEM, or the key is not the certificate's (uvicorn printed "serving on
            https://..." and then "[SSL] PEM lib", naming no file).
    """
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certfile), str(keyfile))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or "mismatch" in str(reason).lower():
            raise ServerConfigError(f"--ssl-keyfile {keyfile} is not the private key of --ssl-certfile {certfile}; "
                                    "give the key the certificate was made with.") from None
        raise ServerConfigError(f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile} cannot be loaded ({reason}); "
                                "give a PEM certificate and its unencrypted PEM private key.") from None
    except OSError as exc:
        raise ServerConfigError(f"TLS files {certfile}, {keyfile} cannot be read ({exc.strerror}).") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the options, load the model, serve until interrupted."""
    token = check_serve_options(args)
    try:
        import uvicorn

        from .server import ServerConfig, create_app
    except ImportError as exc:
        raise ServerConfigError(f"The server needs FastAPI and uvicorn ({exc}); install them with: "
                                "pip install 'samvolsegment[server]'.") from None
    from ..cli.common import check_device, load_model_verbose

    if args.self_signed:
        args.ssl_certfile, args.ssl_keyfile = self_signed_files(args)
    device = getattr(args, "device", "cpu")
    check_device(device)
    model = load_model_verbose(args.model, device)
    config = ServerConfig(
        token=token, device=device, lease_s=args.lease_minutes * 60, max_memory_bytes=int(args.max_memory_gb * 2**30),
        cache_bytes=int(args.cache_gb * 2**30), history_bytes=int(args.history_mb * 2**20),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_voxels=args.max_voxels, queue_size=args.queue)
    app = create_app(model, config)
    tls = args.ssl_certfile is not None
    scheme = "https" if tls else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {getattr(model, 'model_id', '?')} on {scheme}://{host}:{args.port} "
          f"({'token required' if token else 'no token: this machine only'}"
          f"{'' if tls else ', no TLS'}); Ctrl+C stops")
    if not tls and not is_loopback_host(args.host):
        print("warning: without TLS the token and the images cross the network in clear text; use "
              "--ssl-certfile/--ssl-keyfile or a TLS reverse proxy", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                ssl_certfile=str(args.ssl_certfile) if tls else None,
                ssl_keyfile=str(args.ssl_keyfile) if tls else None, timeout_keep_alive=30)
    return 0
