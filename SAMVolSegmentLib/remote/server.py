"""The inference server: one model on one device, many clients, each click a small JSON request.

Endpoints (``/health`` and ``/info`` are open; everything under ``/v3`` (:data:`protocol.API_PREFIX`) and ``/v2``
(protocol 2, for older clients) needs ``Authorization: Bearer TOKEN`` when the server has a token; the table
names ``/v2``, and ``/v3`` has the same endpoints):

===========================================  =====================================================================
``GET /health``                              ``{"ok": true}`` (load balancers, "Test connection")
``GET /info``                                model id, device, protocol version, limits
``GET /v2/volumes/{fp}``                     200 when the server holds the volume with content id ``fp``, else 404
``PUT /v2/volumes/{fp}``                     upload (body: :func:`protocol.encode_volume`; skipped if held)
``POST /v2/sessions``                        ``{"volume": fp}`` → ``{"session": id, "lease_s": ...}``
``GET /v2/sessions/{id}?wait=S``             readiness and undo/redo state (waits up to S s for readiness)
``DELETE /v2/sessions/{id}``                 close the session
``POST /v2/sessions/{id}/click``             ``{"point_ras": [r, a, s], "positive": true}`` → the changed box
``POST /v2/sessions/{id}/box``               ``{"min_ras": [...], "max_ras": [...]}``
``POST /v2/sessions/{id}/scribble``          ``{"points_ras": [[r, a, s], ...], "positive": true}`` (an open polyline)
``POST /v2/sessions/{id}/lasso``             ``{"points_ras": [[r, a, s], ...], "positive": true}`` (a closed contour)
``POST /v2/sessions/{id}/{op}``              ``clear_box``, ``undo``, ``redo``, ``reset``
``PUT /v2/sessions/{id}/initial_mask``       body: :func:`protocol.encode_bits` of the full mask; empty = none
``GET /v2/sessions/{id}/mask``               the full mask (packed bits)
``GET /v2/stats``                            memory, sessions, queue depth
===========================================  =====================================================================

Protocol 3 differs only in the replies of steps and of ``mask``: binary frames (:func:`protocol.encode_frame`) that
carry the change against the client's mirror, with mask versions (``X-SAMVolSeg-Mask-Version``; see
:mod:`.protocol`). ``/info`` lists the versions in ``protocols`` and answers ``protocol`` with the one the client
named in ``X-SAMVolSeg-Protocol`` when the server speaks it (a protocol-2 client checks that field), else the
newest.

Design:

* **One worker thread owns the model.** Every step (and session creation) is a job in a bounded queue; a full
  queue answers 503 with ``Retry-After`` at once instead of letting requests pile up until clients time out.
  Uploads are decoded and validated, and replies compressed, outside the worker, so neither stalls other
  users' clicks.
* **Small replies.** A protocol-3 step's reply is the change against the mask the client holds (the server keeps
  that mask, one byte a voxel, per session), as run lengths compressed in the codec the client asked for
  (:func:`protocol.choose_mask_codec`); protocol 2 sends the changed box's foreground box as packed bits.
* **Memory is bounded in bytes.** Uploaded volumes and sessions share one LRU budget (``max_memory_bytes``);
  the least recently used go first. Embeddings live in the predictor's own byte-bounded cache. An evicted or
  expired session answers 410 with the reason; the client recreates it and replays its steps.
* **Leases.** A session not used for ``lease_s`` seconds expires (410).
* **Errors.** Bad input is a 4xx with ``{"error": class name, "detail": the fix}``; an unexpected failure is a
  500 with a generic message (the traceback goes to the server log only). Nothing in a reply names a server
  file path.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import queue
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine.mask_update import MaskUpdate
from ..engine.session_protocol import as_click_sign, as_point_ras
from ..engine.strokes import STROKE_METHODS, as_polyline_ras
from ..errors import (
    AuthenticationError,
    InvalidImageError,
    InvalidPromptError,
    SAMVolSegmentError,
    ServerBusyError,
    SessionStateError,
)
from ..model.proposal_head import click_adapted_classes, proposal_classes
from .protocol import (
    MASK_CODECS_HEADER,
    MASK_VERSION_HEADER,
    META_HEADER,
    PROTOCOL_HEADER,
    PROTOCOLS,
    UPDATE_MEDIA_TYPE,
    WireFormatError,
    api_prefix,
    check_volume_meta,
    choose_mask_codec,
    content_id,
    decode_bits,
    decode_volume,
    encode_delta,
    encode_frame,
    encode_update,
    error_body,
    foreground_box,
    mask_delta,
    parse_json,
)

LOG = logging.getLogger("samvolseg.server")
#: Annotation the server hangs on every history step it creates (see ``run_step``).
_STEP_TAG = "samvolseg-remote-step"


@dataclass
class ServerConfig:
    """Limits and policies of a server (every size in bytes).

    Attributes:
        token: bearer token every ``/v2`` request must carry; None = no authentication (loopback only; the
            CLI refuses to bind another address without one).
        device: the torch device the model runs on (reported by ``/info``).
        lease_s: a session idle this long expires.
        max_memory_bytes: volumes + sessions (each session counted as its float32 volume, its float32 copy on
            the model's grid, its label and ``history_bytes``); least recently used go first.
        cache_bytes: embedding cache (shared by all sessions; same volume → same embeddings).
        history_bytes: undo history bound of each session.
        max_undo: undo depth of each session.
        max_upload_bytes: largest compressed volume upload.
        max_voxels: largest volume (voxels), also once resampled to the model's grid (coarse voxels grow).
        max_json_bytes: largest JSON request body.
        queue_size: model jobs that may wait; one more gets 503.
        retry_after_s: what a 503 tells the client to wait.
        max_wait_s: longest ``?wait=`` a readiness query may block.
        protocols: the protocol versions served (each under ``/v{N}``); all of :data:`protocol.PROTOCOLS` unless
            a test or a staged roll-out needs fewer.
    """

    token: Optional[str] = None
    device: str = "cpu"
    lease_s: float = 1800.0
    max_memory_bytes: int = 8 << 30
    cache_bytes: int = 2 << 30
    history_bytes: int = 64 << 20
    max_undo: int = 100
    max_upload_bytes: int = 2 << 30
    max_voxels: int = 512 * 512 * 1024
    max_json_bytes: int = 256 << 10  # a scribble or lasso of a few thousand points
    queue_size: int = 32
    retry_after_s: int = 1
    max_wait_s: float = 30.0
    protocols: Tuple[int, ...] = PROTOCOLS


class HTTPReplyError(Exception):
    """An error reply: status, error name, a message that names the fix, optional headers."""

    def __init__(self, status: int, error: str, detail: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


# ---------------------------------------------------------------- the model worker
class ModelWorker:
    """One thread that runs every model job, fed by a bounded queue (torch on one device is not worth sharing)."""

    def __init__(self, queue_size: int, retry_after_s: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._retry_after_s = retry_after_s
        self._thread = threading.Thread(target=self._run, name="samvolseg-model-worker", daemon=True)
        self._thread.start()
        self.jobs_done = 0

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._queue.qsize()

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queue a job; its result (or exception) arrives in the returned future.

        Raises:
            HTTPReplyError: 503 when the queue is full (the job did not run and will not).
        """
        future: Future = Future()
        try:
            self._queue.put_nowait((job, future))
        except queue.Full:
            raise HTTPReplyError(503, ServerBusyError.__name__,
                              f"The server is busy ({self._queue.maxsize} requests waiting); retry in "
                              f"{self._retry_after_s} s.", {"Retry-After": str(self._retry_after_s)}) from None
        return future

    async def run(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` on the worker and await its result."""
        return await asyncio.wrap_future(self.submit(job))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # delivered to the request that queued it
                future.set_exception(exc)
            self.jobs_done += 1

    def close(self, timeout: float = 10.0) -> None:
        """Let queued jobs finish, then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


# ---------------------------------------------------------------- volumes and sessions
@dataclass
class _StoredVolume:
    array_kji: np.ndarray  # original dtype, read-only
    ijk_to_ras: np.ndarray
    nbytes: int
    model_voxels: int  # voxels of the model's grid it resamples to (a session holds that copy too)


@dataclass
class _ServerSession:
    sid: str
    session: Any  # InteractiveSession
    volume_id: str
    nbytes: int
    last_used: float
    #: Protocol 3: the mask as of ``mask_version``, as the client's mirror holds it; None when unknown (a
    #: protocol-2 step changed the mask): the next protocol-3 reply then carries the whole mask.
    mirror: Optional[np.ndarray] = None
    #: Counts the steps that ran (every protocol); a protocol-3 reply names the version it brings the mirror to.
    mask_version: int = 0
    #: A box holding all of the mirror's foreground (None: empty), so a step compares only where it can differ.
    mirror_box: Optional[Tuple[Tuple[int, int], ...]] = None


@dataclass
class _Delta:
    """What a protocol-3 reply brings the client's mirror from ``base`` (None: from an empty mask) to ``version``:
    ``xor`` (None for a whole-mask reply) and ``new`` over the part of ``bbox`` that starts at ``origin``."""

    base: Optional[int]
    version: int
    bbox: Tuple[Tuple[int, int], ...]
    xor: Optional[np.ndarray]
    new: Optional[np.ndarray]
    origin: Tuple[int, ...] = (0, 0, 0)


def _track_step(entry: _ServerSession, update: MaskUpdate, client_version: Optional[int]) -> _Delta:
    """Advance a session's mask version after a step (on the worker, so in step order) and say what the reply
    carries: the change in the step's box when the client holds the server's mirror, else the whole mask."""
    entry.mask_version += 1
    if entry.mirror is not None and client_version == entry.mask_version - 1:
        change, entry.mirror_box = mask_delta(entry.mirror, update, entry.mirror_box)
        if change is None:
            return _Delta(client_version, entry.mask_version, update.bbox_kji, None, None)
        return _Delta(client_version, entry.mask_version, update.bbox_kji, change.xor, change.new,
                      tuple(lo for lo, _ in change.region))
    return _whole_mask(entry)


def _whole_mask(entry: _ServerSession) -> _Delta:
    """A delta from an empty mask to the session's whole mask at its current version; the mirror restarts from it."""
    mask = entry.session.mask_array_kji()  # a copy, which becomes the mirror; the reply encodes another copy
    entry.mirror, entry.mirror_box = mask, foreground_box(mask)
    return _Delta(None, entry.mask_version, tuple((0, int(n)) for n in mask.shape), None, mask.copy())


class ResourceStore:
    """Volumes and sessions under one LRU byte budget, with session leases.

    Thread-safe: the event loop looks sessions up, the worker adds them.
    """

    #: How many ended sessions are remembered, to answer 410 (with the reason) instead of 404.
    GONE_MEMORY = 4096

    def __init__(self, max_bytes: int, lease_s: float) -> None:
        self.max_bytes = int(max_bytes)
        self.lease_s = float(lease_s)
        self._lock = threading.Lock()
        self._entries: OrderedDict = OrderedDict()  # ("volume"|"session", key) → _StoredVolume | _ServerSession
        self._gone: OrderedDict = OrderedDict()  # session id → why it ended
        self.nbytes = 0
        self.reserved = 0  # bytes of work in flight (uploads being decoded), counted in nbytes too
        self.evicted = 0
        self.expired = 0

    # volumes
    def volume(self, volume_id: str) -> Optional[_StoredVolume]:
        with self._lock:
            entry = self._entries.get(("volume", volume_id))
            if entry is not None:
                self._entries.move_to_end(("volume", volume_id))
            return entry

    def add_volume(self, volume_id: str, volume: _StoredVolume) -> None:
        self._add(("volume", volume_id), volume, volume.nbytes, "volume")

    # sessions
    def add_session(self, entry: _ServerSession) -> None:
        self._add(("session", entry.sid), entry, entry.nbytes, "session")

    def session(self, sid: str) -> _ServerSession:
        """The live session ``sid`` (its lease renewed).

        Raises:
            HTTPReplyError: 410 for an expired or evicted session (with the reason), 404 for an unknown one.
        """
        self.reap()
        with self._lock:
            entry = self._entries.get(("session", sid))
            if entry is not None:
                entry.last_used = time.monotonic()
                self._entries.move_to_end(("session", sid))
                return entry
            reason = self._gone.get(sid)
        if reason is not None:
            raise HTTPReplyError(410, "SessionExpiredError",
                              f"Session {sid} {reason}; create a new session and replay the steps "
                              "(RemoteSession does this by itself).")
        raise HTTPReplyError(404, "SessionNotFound",
                          f"No session {sid} on this server (it may have restarted); create a new session.")

    def require_live(self, entry: _ServerSession) -> None:
        """Renew the lease of a session a queued job is about to use, or refuse the job as for a lookup.

        A request looks its session up before it waits in the model queue; meanwhile the session may expire,
        be evicted or be deleted (and closed). Its job then answers 410 (the client replays its steps on a new
        session) instead of the closed session's error.

        Raises:
            HTTPReplyError: 410 with the reason the session ended.
        """
        with self._lock:
            if self._entries.get(("session", entry.sid)) is entry:
                entry.last_used = time.monotonic()
                self._entries.move_to_end(("session", entry.sid))
                return
            reason = self._gone.get(entry.sid, "ended")
        raise HTTPReplyError(410, "SessionExpiredError",
                             f"Session {entry.sid} {reason} while this request waited for the model; create a new "
                             "session and replay the steps (RemoteSession does this by itself).")

    def remove_session(self, sid: str, reason: str = "was closed by its client") -> bool:
        with self._lock:
            entry = self._entries.pop(("session", sid), None)
            if entry is None:
                return False
            self._forget(entry, reason)
        entry.session.close()
        return True

    def reap(self) -> int:
        """Expire sessions idle past their lease; how many ended."""
        now = time.monotonic()
        ended: List[_ServerSession] = []
        with self._lock:
            for key, entry in list(self._entries.items()):
                if key[0] == "session" and now - entry.last_used > self.lease_s:
                    del self._entries[key]
                    self._forget(entry, f"expired after {self.lease_s:g} s without a request")
                    self.expired += 1
                    ended.append(entry)
        for entry in ended:
            entry.session.close()
        return len(ended)

    def counts(self) -> Dict[str, int]:
        with self._lock:
            sessions = sum(1 for key in self._entries if key[0] == "session")
            return {"sessions": sessions, "volumes": len(self._entries) - sessions, "bytes": self.nbytes,
                    "max_bytes": self.max_bytes, "evicted": self.evicted, "expired": self.expired}

    def close_all(self) -> None:
        with self._lock:
            entries = [e for k, e in self._entries.items() if k[0] == "session"]
            self._entries.clear()
            self.nbytes = 0
        for entry in entries:
            entry.session.close()

    def reserve(self, nbytes: int, what: str, retry_after_s: int = 1) -> int:
        """Count ``nbytes`` of work in flight (an upload being decoded) against the budget until :meth:`release`;
        least recently used entries go as for an added one. Returns ``nbytes`` (what to release).

        Raises:
            HTTPReplyError: 413 when the work alone exceeds the whole budget; 503 (retry) when work already in
                flight leaves no room for it. Nothing is reserved then.
        """
        self._check_fits(nbytes, what)
        with self._lock:
            if self.reserved + nbytes > self.max_bytes:
                raise HTTPReplyError(503, ServerBusyError.__name__,
                                     f"The server is decoding other uploads ({self.reserved / 1e6:.0f} MB of its "
                                     f"{self.max_bytes / 1e6:.0f} MB memory budget); retry in {retry_after_s} s.",
                                     {"Retry-After": str(retry_after_s)})
            self.reserved += nbytes
            self.nbytes += nbytes
            ended = self._evict_locked()
        for entry in ended:
            entry.session.close()
        return nbytes

    def release(self, nbytes: int) -> None:
        """End a :meth:`reserve`."""
        with self._lock:
            self.reserved -= nbytes
            self.nbytes -= nbytes

    def grow_session(self, sid: str, nbytes: int) -> None:
        """Count ``nbytes`` more (or fewer, when negative) for a live session; evict others when over budget."""
        with self._lock:
            entry = self._entries.get(("session", sid))
            if entry is None:
                return
            entry.nbytes += nbytes
            self.nbytes += nbytes
            ended = self._evict_locked(keep=("session", sid))
        for ended_entry in ended:
            ended_entry.session.close()

    # internals
    def _check_fits(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_bytes:
            raise HTTPReplyError(413, "InsufficientMemory",
                              f"This {what} needs about {nbytes / 1e6:.0f} MB, more than the server's whole memory "
                              f"budget ({self.max_bytes / 1e6:.0f} MB); crop or resample the volume, or start the "
                              "server with a larger --max-memory-gb.")

    def _add(self, key: Tuple[str, str], value: Any, nbytes: int, what: str) -> None:
        self._check_fits(nbytes, what)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._entries[key] = value
            self.nbytes += nbytes
            ended = self._evict_locked()
        for entry in ended:
            entry.session.close()

    def _evict_locked(self, keep: Optional[Tuple[str, str]] = None) -> List[_ServerSession]:
        """Drop least recently used entries (never ``keep``) until the budget holds; the sessions to close."""
        ended: List[_ServerSession] = []
        for oldest_key in list(self._entries):
            if self.nbytes <= self.max_bytes:
                break
            if oldest_key == keep:
                continue
            oldest = self._entries.pop(oldest_key)
            self.evicted += 1
            if oldest_key[0] == "volume":
                self.nbytes -= oldest.nbytes
            else:  # _forget does the byte count of a session
                self._forget(oldest, "was closed to free memory for other work (the server's memory "
                                     "budget was reached)")
                ended.append(oldest)
        return ended

    def _forget(self, entry: Any, reason: str) -> None:
        """Book-keeping of an entry just removed from ``_entries`` (lock held)."""
        self.nbytes -= entry.nbytes
        self._gone[entry.sid] = reason
        while len(self._gone) > self.GONE_MEMORY:
            self._gone.popitem(last=False)


# ---------------------------------------------------------------- the app
def create_app(model: Any, config: Optional[ServerConfig] = None) -> FastAPI:
    """The FastAPI app serving ``model`` (a loaded model or a :class:`~SAMVolSegmentLib.engine.predictor.Predictor`).

    The app owns a worker thread and a store; both stop when the app shuts down (uvicorn's lifespan).
    """
    from contextlib import asynccontextmanager

    from ..engine.predictor import Predictor
    from ..engine.session import InteractiveSession

    cfg = config or ServerConfig()
    predictor = model if isinstance(model, Predictor) else Predictor(model, cache_bytes=cfg.cache_bytes)
    worker = ModelWorker(cfg.queue_size, cfg.retry_after_s)
    store = ResourceStore(cfg.max_memory_bytes, cfg.lease_s)
    inflating = threading.Semaphore(1)  # uploads inflated at once (see decode_upload)
    token = cfg.token.encode("utf-8") if cfg.token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def reaper() -> None:
            while True:
                await asyncio.sleep(max(1.0, min(30.0, cfg.lease_s / 4)))
                store.reap()

        task = asyncio.ensure_future(reaper())
        try:
            yield
        finally:
            task.cancel()
            worker.close()
            store.close_all()

    app = FastAPI(title="SAMVolSegment inference server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.worker, app.state.predictor, app.state.config = store, worker, predictor, cfg

    # ---------------------------------------------------------------- errors: always JSON, never a traceback
    @app.exception_handler(HTTPReplyError)
    async def _problem(request: Request, exc: HTTPReplyError) -> JSONResponse:
        return JSONResponse(error_body(exc.error, exc.detail), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(SAMVolSegmentError)
    async def _engine_error(request: Request, exc: SAMVolSegmentError) -> JSONResponse:
        status = 409 if isinstance(exc, SessionStateError) else 422
        return JSONResponse(error_body(type(exc).__name__, str(exc)), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(error_body("WireFormatError", f"Malformed request ({fields})."), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        spoken = ", ".join(str(v) for v in protocols)
        detail = (f"No endpoint {request.method} {request.url.path}; this server speaks protocol {spoken} "
                  "(GET /info)." if exc.status_code in (404, 405) else str(exc.detail))
        return JSONResponse(error_body(name, detail), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        LOG.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("InternalError", "The server failed on this request (the details are in "
                                                        "its log); try again, and report it if it persists."),
                            status_code=500)

    # ---------------------------------------------------------------- open endpoints
    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"ok": True}

    protocols = tuple(sorted(int(v) for v in cfg.protocols))
    if not protocols or any(v not in PROTOCOLS for v in protocols):
        raise ValueError(f"ServerConfig.protocols {cfg.protocols!r}: give some of {PROTOCOLS}.")

    @app.get("/info")
    async def info(request: Request) -> Dict[str, Any]:
        asked = request.headers.get(PROTOCOL_HEADER, "")
        # A protocol-2 client refuses any other "protocol"; newer clients read "protocols".
        protocol = int(asked) if _is_count(asked) and int(asked) in protocols else protocols[-1]
        return {"service": "samvolseg", "version": __version__, "protocol": protocol, "protocols": list(protocols),
                "model_id": predictor.model_id, "device": cfg.device, "auth_required": token is not None,
                "proposal_classes": list(proposal_classes(predictor.model)),
                "adapted_classes": list(click_adapted_classes(predictor.model)),
                "lease_s": cfg.lease_s, "prompts": ["click", "box", *STROKE_METHODS],
                "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_voxels": cfg.max_voxels,
                           "max_json_bytes": cfg.max_json_bytes}}

    # ---------------------------------------------------------------- authenticated API
    def request_version(request: Request) -> int:
        """The protocol version of the ``/v{version}`` the request called.

        Raises:
            HTTPReplyError: 404 for a version this server does not serve.
        """
        text = str(request.path_params.get("version", ""))
        if not (_is_count(text) and int(text) in protocols):
            raise HTTPReplyError(404, "NotFound", f"No endpoint {request.method} {request.url.path}; this server "
                                                  f"speaks protocol {', '.join(map(str, protocols))} (GET /info).")
        return int(text)

    async def authorize(request: Request) -> None:
        version = request_version(request)
        asked = request.headers.get(PROTOCOL_HEADER)
        if asked is not None and asked != str(version):
            raise HTTPReplyError(400, "ProtocolMismatchError",
                                 f"The client speaks protocol {asked} but called {api_prefix(version)}; this server "
                                 f"speaks {', '.join(map(str, protocols))} (each under /v<N>). Install the same "
                                 "SAMVolSegment version on both sides.")
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        # compare_digest: the time taken does not reveal how many leading characters were right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), token):
            raise HTTPReplyError(401, AuthenticationError.__name__,
                              "Missing or wrong token: send 'Authorization: Bearer <token>' with the token the "
                              "server was started with (--token / --token-file).",
                              {"WWW-Authenticate": 'Bearer realm="samvolseg"'})

    # One router serves every version (``/v2``, ``/v3``): the endpoints are the same, only some replies differ.
    api = APIRouter(prefix="/v{version}", dependencies=[Depends(authorize)])

    async def read_body(request: Request, limit: int, what: str) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise HTTPReplyError(413, "PayloadTooLarge", f"The {what} is {int(declared)} bytes; this server "
                                                              f"accepts at most {limit}.")
            except ValueError:
                raise HTTPReplyError(400, "WireFormatError", "Content-Length is not a number.") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPReplyError(413, "PayloadTooLarge", f"The {what} exceeds {limit} bytes, this server's limit.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request, what: str) -> Dict[str, Any]:
        return parse_json(await read_body(request, cfg.max_json_bytes, what), what)

    def session_state(entry: _ServerSession) -> Dict[str, Any]:
        session = entry.session
        return {"can_undo": session.can_undo, "can_redo": session.can_redo,
                "clicks": [[*(float(v) for v in c.point_ras), bool(c.positive)] for c in session.clicks]}

    async def run_step(sid: str, step: Callable[[Any], MaskUpdate], request: Request, kind: str = "step") -> Any:
        """Run a step on the worker; the reply says whether it created a history step (``pushed``) or moved
        one (``moved``), so the client keeps its callers' annotations aligned with the server's history.
        Protocol 2: a JSON reply with the changed box; 3: a frame with the change against the client's mirror."""
        entry = store.session(sid)
        codec = choose_mask_codec(request.headers.get(MASK_CODECS_HEADER))
        version = request_version(request)
        client_version = _mask_version(request) if version >= 3 else None

        def job() -> Tuple[MaskUpdate, Optional[_Delta], Dict[str, Any]]:
            store.require_live(entry)  # it may have ended while this job waited in the queue: 410, not 409
            session = entry.session
            moved = session.can_undo if kind == "undo" else session.can_redo if kind == "redo" else False
            try:
                update = step(session)
            except SessionStateError:
                store.require_live(entry)  # closed (evicted, deleted) while the step ran: 410 as well
                raise
            # Every step this server creates is tagged below, so an untagged newest step is one just created
            # (a no-op such as clear_box without a box leaves the previous tag in last_annotation).
            pushed = kind == "step" and session.can_undo and session.last_annotation is None
            if pushed:
                session.annotate_last_step(_STEP_TAG)
            timing = dict(session.last_timing)
            if version >= 3:
                started = time.perf_counter()
                delta: Optional[_Delta] = track(entry, lambda: _track_step(entry, update, client_version))
                timing["server_delta_s"] = time.perf_counter() - started  # not in the step's own total_s
            else:  # the mirror no longer matches what a protocol-3 client holds
                if entry.mirror is not None:
                    store.grow_session(entry.sid, -int(entry.mirror.nbytes))
                entry.mirror, entry.mask_version, delta = None, entry.mask_version + 1, None
            # The update's mask is the step's own array (the history keeps packed copies): safe to read later.
            return update, delta, {"timing": timing, "pushed": pushed, "moved": moved,
                                   "state": session_state(entry)}

        update, delta, reply = await worker.run(job)
        entry.last_used = time.monotonic()  # a long step must not count as idle time
        if delta is None:
            reply["update"] = await run_in_threadpool(encode_update, update, codec)  # off the model worker
            return reply
        return await frame_reply(reply, delta, codec)

    def track(entry: _ServerSession, advance: Callable[[], _Delta]) -> _Delta:
        """Run ``advance`` and count a newly allocated mirror against the memory budget."""
        had_mirror = entry.mirror is not None
        delta = advance()
        if not had_mirror and entry.mirror is not None:
            store.grow_session(entry.sid, int(entry.mirror.nbytes))
        return delta

    async def frame_reply(reply: Dict[str, Any], delta: _Delta, codec: str) -> Response:
        """A protocol-3 reply: ``reply`` and the delta's header in the frame's JSON, its run bytes after it."""
        started = time.perf_counter()
        meta, payload = await run_in_threadpool(encode_delta, delta.xor, delta.new, codec, delta.origin)
        reply.setdefault("timing", {})["server_encode_s"] = time.perf_counter() - started
        reply["update"] = {"bbox": [list(pair) for pair in delta.bbox], "base": delta.base,
                           "version": delta.version, **meta}
        return Response(encode_frame(reply, payload), media_type=UPDATE_MEDIA_TYPE)

    # volumes
    @api.get("/volumes/{volume_id}")
    async def volume_status(volume_id: str, request: Request) -> Dict[str, Any]:
        stored = store.volume(_check_id(volume_id))
        if stored is None:
            raise HTTPReplyError(404, "VolumeNotFound", "The server does not hold this volume; upload it "
                                                     f"(PUT {request.url.path}).")
        return {"volume": volume_id, "shape": list(stored.array_kji.shape)}

    @api.put("/volumes/{volume_id}")
    async def upload_volume(volume_id: str, request: Request) -> Response:
        _check_id(volume_id)
        if store.volume(volume_id) is not None:  # uploaded before (by anyone): nothing to do
            return JSONResponse({"volume": volume_id, "stored": False}, status_code=200)
        meta = _header_json(request)
        shape, dtype, matrix = check_volume_meta(meta, cfg.max_voxels)
        # Before the body is read or inflated: what decoding it holds at its peak (the inflated bytes and the
        # voxels, then the voxels and the engine's float32 copy, and the body) counts against the budget, so an
        # upload that cannot fit is refused at once and uploads at once cannot add up beyond it.
        voxels = math.prod(shape)
        declared = request.headers.get("content-length", "")
        peak = 2 * voxels * dtype.itemsize + 4 * voxels + (int(declared) if declared.isdigit() else 0)
        reservation = store.reserve(peak, "volume upload (while it is decoded)", cfg.retry_after_s)
        try:
            body = await read_body(request, cfg.max_upload_bytes, "volume upload")
            stored = await run_in_threadpool(decode_upload, body, volume_id, shape, dtype, matrix)
        finally:
            store.release(reservation)
            _return_freed_memory()
        store.add_volume(volume_id, stored)
        return JSONResponse({"volume": volume_id, "stored": True}, status_code=201)

    def decode_upload(body: bytes, volume_id: str, shape: Tuple[int, int, int], dtype: np.dtype,
                      matrix: np.ndarray) -> _StoredVolume:
        """Inflate, verify and validate an upload (a thread of the pool, never the model worker)."""
        with inflating:  # one upload inflates at a time: memory peaks never add up
            return decode(body, volume_id, shape, dtype, matrix)

    def decode(body: bytes, volume_id: str, shape: Tuple[int, int, int], dtype: np.dtype,
               matrix: np.ndarray) -> _StoredVolume:
        """The stored volume of an upload body, or an error (corrupt, mismatched id, invalid image)."""
        from ..engine.geometry import ModelGrid
        from ..engine.preprocessing import load_volume

        array = decode_volume(body, shape, dtype)
        if content_id(array, matrix) != volume_id:
            raise WireFormatError("The uploaded volume does not match its content id (corrupted in transit, or "
                                  "the client computed it differently); upload it again.")
        volume = load_volume(array, matrix)  # the engine's validation (NaN, constant, degenerate geometry)
        grid = ModelGrid.covering(volume.geometry)
        model_voxels = math.prod(int(v) for v in grid.shape_model)
        if model_voxels > cfg.max_voxels:  # coarse voxels: the session's resampled copy would be too big
            raise InvalidImageError(
                f"Resampled to the model's {grid.spacing:g} mm grid this volume has {model_voxels} voxels "
                f"({' × '.join(str(v) for v in grid.shape_model)}); this server accepts at most "
                f"{cfg.max_voxels}. Check the voxel spacing in the image header, or crop the volume.")
        array.setflags(write=False)
        return _StoredVolume(array, matrix, int(array.nbytes), model_voxels)

    # sessions
    @api.post("/sessions")
    async def create_session(request: Request) -> Response:
        data = await read_json(request, "session")
        volume_id = data.get("volume")
        if not isinstance(volume_id, str):
            raise WireFormatError('Send {"volume": "<content id>"} to create a session.')
        stored = store.volume(_check_id(volume_id))
        if stored is None:
            raise HTTPReplyError(404, "VolumeNotFound", "The server does not hold this volume (never uploaded, or "
                                                     "evicted to free memory); upload it again.")

        def job() -> _ServerSession:
            session = InteractiveSession(predictor, max_undo=cfg.max_undo, max_undo_bytes=cfg.history_bytes)
            try:
                session.set_volume(stored.array_kji, stored.ijk_to_ras)
            except BaseException:
                session.close()
                raise
            voxels = int(stored.array_kji.size)
            # float32 copy + float32 model-grid copy + uint8 label + the history bound (+ protocol 3's mirror,
            # which starts as the empty mask at version 0, as the client's).
            mirror = np.zeros(stored.array_kji.shape, np.uint8) if request_version(request) >= 3 else None
            nbytes = voxels * 4 + stored.model_voxels * 4 + voxels + cfg.history_bytes + (
                0 if mirror is None else voxels)
            entry = _ServerSession(secrets.token_urlsafe(16), session, volume_id, nbytes, time.monotonic(),
                                   mirror)
            try:
                store.add_session(entry)
            except BaseException:
                session.close()
                raise
            return entry

        entry = await worker.run(job)
        return JSONResponse({"session": entry.sid, "lease_s": cfg.lease_s, "model_id": predictor.model_id,
                             "max_undo": cfg.max_undo, "state": session_state(entry),
                             "mask_version": entry.mask_version}, status_code=201)

    @api.get("/sessions/{sid}")
    async def get_session(sid: str, wait: float = 0.0) -> Dict[str, Any]:
        entry = store.session(sid)
        if not math.isfinite(wait) or wait < 0:
            raise WireFormatError("wait must be a number of seconds ≥ 0.")
        if wait > 0:
            try:
                await run_in_threadpool(entry.session.wait_until_ready, min(wait, cfg.max_wait_s))
            except FutureTimeout:
                pass
        elif entry.session.is_ready:
            entry.session.wait_until_ready(0)  # re-raises a preprocessing error as a 4xx
        return {"session": sid, "ready": entry.session.is_ready, "state": session_state(entry)}

    @api.delete("/sessions/{sid}")
    async def delete_session(sid: str) -> Dict[str, Any]:
        store.session(sid)  # 404/410 for an unknown one
        return {"session": sid, "closed": store.remove_session(sid)}

    @api.post("/sessions/{sid}/click")
    async def click(sid: str, request: Request) -> Any:
        data = await read_json(request, "click")
        point = _point(data.get("point_ras"), "point_ras")
        positive = as_click_sign(data.get("positive", True))  # the engine's rule: JSON true/false only
        return await run_step(sid, lambda s: s.add_click(point, positive), request)

    @api.post("/sessions/{sid}/box")
    async def box(sid: str, request: Request) -> Any:
        data = await read_json(request, "box")
        low, high = _point(data.get("min_ras"), "min_ras"), _point(data.get("max_ras"), "max_ras")
        return await run_step(sid, lambda s: s.set_box(low, high), request)

    @api.post("/sessions/{sid}/propose")
    async def propose(sid: str, request: Request) -> Any:
        data = await read_json(request, "propose")
        class_name = data.get("class")
        if not isinstance(class_name, str) or not class_name:
            raise InvalidPromptError("propose needs {\"class\": NAME}, one of the classes /info lists.")
        return await run_step(sid, lambda s: s.propose(class_name), request)

    steps = {"clear_box": lambda s: s.clear_box(), "undo": lambda s: s.undo(), "redo": lambda s: s.redo(),
             "reset": lambda s: s.reset()}
    kinds = {"undo": "undo", "redo": "redo"}

    def add_stroke_route(kind: str) -> None:
        @api.post(f"/sessions/{{sid}}/{kind}", name=kind)
        async def stroke(sid: str, request: Request) -> Any:
            data = await read_json(request, kind)
            points = as_polyline_ras(data.get("points_ras"), kind, min_points=1)  # the engine checks again
            positive = as_click_sign(data.get("positive", True))
            method = STROKE_METHODS[kind]
            return await run_step(sid, lambda s: getattr(s, method)(points, positive), request)

    for kind in STROKE_METHODS:  # before the catch-all /{op} route below
        add_stroke_route(kind)

    @api.post("/sessions/{sid}/{op}")
    async def simple_step(sid: str, op: str, request: Request) -> Any:
        if op not in steps:
            raise HTTPReplyError(404, "NotFound", f"No step {op!r}; use click, box, {', '.join(steps)}.")
        await read_json(request, op)  # bounded and well-formed even when empty
        return await run_step(sid, steps[op], request, kinds.get(op, "step"))

    @api.put("/sessions/{sid}/initial_mask")
    async def initial_mask(sid: str, request: Request) -> Any:
        entry = store.session(sid)
        shape = tuple(int(v) for v in entry.session.geometry.shape_kji)
        limit = min(cfg.max_upload_bytes, int(np.prod(shape)) // 8 + (1 << 20))  # ≥ packed bits, incompressible
        body = await read_body(request, limit, "initial mask")
        mask = await run_in_threadpool(decode_bits, body, shape) if body else None
        return await run_step(sid, lambda s: s.set_initial_mask(mask), request, "initial")

    @api.get("/sessions/{sid}/mask")
    async def full_mask(sid: str, request: Request) -> Any:
        entry = store.session(sid)
        codec = choose_mask_codec(request.headers.get(MASK_CODECS_HEADER))

        if request_version(request) >= 3:  # the whole mask; the mirror restarts from it (the client resynchronises)
            delta, state = await worker.run(lambda: (track(entry, lambda: _whole_mask(entry)),
                                                     session_state(entry)))
            return await frame_reply({"state": state}, delta, codec)

        def job() -> Tuple[np.ndarray, Dict[str, Any]]:  # on the worker: never a copy torn by a running step
            return entry.session.mask_array_kji(), session_state(entry)

        mask, state = await worker.run(job)
        update = MaskUpdate(tuple((0, int(n)) for n in mask.shape), mask)  # type: ignore[arg-type]
        return {"update": await run_in_threadpool(encode_update, update, codec), "state": state}

    @api.get("/stats")
    async def stats() -> Dict[str, Any]:
        store.reap()
        cache = predictor.cache
        return {"store": store.counts(), "queue_depth": worker.depth, "jobs_done": worker.jobs_done,
                "embedding_cache": {"entries": len(cache), "bytes": cache.nbytes, "max_bytes": cache.max_bytes}}

    app.include_router(api)
    return app


# ---------------------------------------------------------------- helpers
def _return_freed_memory() -> None:
    """Give the heap's free memory back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    After a large upload is decoded (or refused), its freed buffers would otherwise stay resident: glibc raises
    its mmap threshold after freeing large blocks, so the next ones come from the heap, which it seldom trims.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and other C libraries
        pass


def _is_count(text: str) -> bool:
    """True for a non-negative decimal integer in ASCII digits (``str.isdigit`` also accepts "²", which ``int``
    refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _mask_version(request: Request) -> Optional[int]:
    """The mask version a protocol-3 client's mirror holds (None without the header: the reply is the whole mask).

    Raises:
        WireFormatError: the header is not a non-negative integer.
    """
    value = request.headers.get(MASK_VERSION_HEADER)
    if value is None:
        return None
    if not _is_count(value.strip()):
        raise WireFormatError(f"{MASK_VERSION_HEADER} must be the mask version of the last reply applied (an integer "
                              "≥ 0); leave it out to get the whole mask.")
    return int(value)


def _check_id(volume_id: str) -> str:
    if len(volume_id) != 32 or any(c not in "0123456789abcdef" for c in volume_id):
        raise HTTPReplyError(400, "WireFormatError", "A volume id is 32 lowercase hex digits (protocol.content_id).")
    return volume_id


def _header_json(request: Request) -> Any:
    import json

    raw = request.headers.get(META_HEADER)
    if raw is None:
        raise WireFormatError(f"The upload needs its {META_HEADER} header (shape, dtype, codec, ijk_to_ras).")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise WireFormatError(f"The {META_HEADER} header is not valid JSON ({exc}).") from None
    except RecursionError:
        raise WireFormatError(f"The {META_HEADER} header nests too deeply; send a flat JSON object.") from None


def _point(value: Any, name: str) -> List[float]:
    """JSON's stricter shape (a list of three numbers: no strings, no booleans, which numpy would convert), then
    the engine's own point rule (:func:`as_point_ras`: finite)."""
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise InvalidPromptError(f"{name} must be three numbers (R, A, S in mm), got {value!r}.")
    return as_point_ras(value, name).tolist()
