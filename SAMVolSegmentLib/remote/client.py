"""``RemoteSession``: the engine's session protocol, served by a ``samvolseg serve`` machine.

Stands in for :class:`~SAMVolSegmentLib.engine.session.InteractiveSession` wherever a
:class:`~SAMVolSegmentLib.engine.session_protocol.SegmentationSession` is expected. Needs numpy and ``requests`` only
(no torch): a laptop without a GPU, or without torch at all, can segment with a model on another machine.

What travels: the volume once (compressed; skipped when the server already holds it, e.g. after a
reconnect or from another user), then each step as a small JSON request. With protocol 3 (the default) its reply
is a binary frame with the change against the client's mirror of the full mask (run lengths, compressed: bz2
where this Python has it), stamped with a mask version; a server that speaks only protocol 2 gets protocol-2
requests instead (replies: the changed box's foreground, packed bits in JSON). Thanks to the mirror,
:meth:`RemoteSession.mask_array_kji` costs no round trip.

Mirror consistency (protocol 3): every request names the version the mirror holds; the server answers a different
one (a reply that never arrived, a step by someone else) with the whole mask. A step that failed without a clear
refusal from the server (connection lost, timeout, server error) marks the mirror unknown: the next step asks for
the whole mask, and :meth:`RemoteSession.mask_array_kji` fetches it first. Whatever the caller missed is then in the
next returned update's box.

Recovery: a session that expired on the server (idle past its lease, evicted to free memory, server restart)
is recreated and its steps since ``set_volume`` are replayed, then the failed step runs again; the caller
sees one slower step. If the replayed mask differs from the mirror (another model behind the URL now), the
returned update also covers the differences.

Retries: only where repeating cannot change the result: reads, the content-addressed volume upload, and any
request the server refused with 503 before running it. A step whose connection broke is not repeated (it may
have run); the error says so.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import requests

from ..engine.geometry import VolumeGeometry
from ..engine.image_checks import warn_about_image
from ..engine.mask_update import BBoxKJI, MaskUpdate, union_bbox
from ..engine.session_protocol import as_click_sign, as_point_ras
from ..engine.strokes import as_polyline_ras
from ..errors import (
    AuthenticationError,
    InvalidImageError,
    InvalidPromptError,
    ProtocolMismatchError,
    RemoteError,
    ServerBusyError,
    ServerUnavailableError,
    SessionExpiredError,
    SessionStateError,
    TLSError,
)
from .protocol import (
    ERROR_CLASSES,
    MASK_CODECS,
    MASK_CODECS_HEADER,
    MASK_VERSION_HEADER,
    META_HEADER,
    PROTOCOL_HEADER,
    PROTOCOLS,
    UPDATE_MEDIA_TYPE,
    WireFormatError,
    api_prefix,
    apply_delta,
    check_bbox,
    content_id,
    decode_delta,
    decode_frame,
    decode_update,
    encode_bits,
    encode_volume,
    is_loopback_host,
)

ProgressCallback = Callable[[float, str], None]
#: (connect, read) seconds for steps; the first click in a new region runs the encoder, which on a CPU
#: server and a large model can take tens of seconds.
DEFAULT_TIMEOUT = (5.0, 120.0)
#: (connect, read) seconds for the volume upload (the server decodes and validates it before replying).
UPLOAD_TIMEOUT = (5.0, 600.0)
#: Step replays kept for recovery after expiry; beyond this the session cannot be restored automatically.
MAX_REPLAY_STEPS = 10000
_JSON_HEADERS = {"Content-Type": "application/json"}
_GONE = ("SessionExpiredError", "SessionNotFound")
#: Key under which a protocol-3 reply's binary payload is handed from ``_reply`` to the code that decodes it.
_PAYLOAD = "_payload"


@dataclass(frozen=True)
class RemoteClick:
    """A click as the server recorded it (RAS mm); includes clicks the engine added to continue a mask."""

    point_ras: np.ndarray
    positive: bool


class RemoteSession:
    """Click-based segmentation on a remote ``samvolseg serve`` (implements ``SegmentationSession``).

    Args:
        url: the server, e.g. ``https://gpu-box:8765`` (``http://`` only for loopback or a trusted network).
        token: the server's bearer token (``--token``); None for a loopback server started without one.
        verify: TLS certificate check: True (system CAs), a path to a CA bundle or the server's self-signed
            certificate, or False (not verified: anyone on the path can read the images; tests only).
        timeout: (connect, read) seconds for each step.
        progress: optional ``callback(fraction, message)`` for the upload and for waits on the server.
        max_busy_retries: how often a request refused with 503 (queue full) is sent again, after the server's
            ``Retry-After``.
        max_undo: history depth the client keeps annotations for (the server reports its own).
        protocol: speak this protocol version only (2 or 3); None: the newest both sides speak (3, or 2 with a
            server of an older SAMVolSegment).

    Raises:
        ServerUnavailableError: the server cannot be reached (the message names host, port and what to check).
        ProtocolMismatchError: the server speaks another protocol version.
        AuthenticationError: the server needs a token and none or a wrong one was given.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        verify: Union[bool, str] = True,
        timeout: Tuple[float, float] = DEFAULT_TIMEOUT,
        progress: Optional[ProgressCallback] = None,
        max_busy_retries: int = 5,
        max_undo: int = 100,
        protocol: Optional[int] = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ServerUnavailableError(f"{url!r} is not a server URL; give http(s)://host:port, e.g. "
                                         "http://127.0.0.1:8765.")
        if isinstance(verify, str) and not os.path.exists(verify):
            raise TLSError(f"verify={verify!r}: no such file; give the server's certificate (cert.pem) or a CA "
                           "bundle, or True for the system's trusted CAs.", "untrusted")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_busy_retries = int(max_busy_retries)
        self._progress = progress
        self._http = requests.Session()
        self._http.verify = verify
        if protocol is not None and protocol not in PROTOCOLS:
            raise ProtocolMismatchError(f"protocol={protocol!r}: this client speaks {', '.join(map(str, PROTOCOLS))}.")
        self._protocols = PROTOCOLS if protocol is None else (int(protocol),)
        #: The protocol version spoken with this server (negotiated by :meth:`check_connection`).
        self.protocol = self._protocols[-1]
        self._prefix = api_prefix(self.protocol)
        self._http.headers[PROTOCOL_HEADER] = str(self.protocol)
        self._http.headers[MASK_CODECS_HEADER] = ", ".join(MASK_CODECS)  # bz2 first where this Python has it
        if token:
            self._http.headers["Authorization"] = f"Bearer {token.strip()}"
        if is_loopback_host(parsed.hostname):
            # A proxy from the environment (HTTP_PROXY without NO_PROXY) would otherwise get loopback requests.
            self._http.trust_env = False
        self._lock = threading.RLock()
        self._last_status: Optional[int] = None
        self.info = self.check_connection()
        self._model_id = str(self.info.get("model_id", "?"))
        self._max_undo = int(max_undo)
        self._reset_volume_state()
        self.last_timing: Dict[str, float] = {}
        self.last_annotation: Any = None
        #: Warnings about the current volume (e.g. it looks like a label map); empty for an ordinary image.
        self.image_warnings: Tuple[str, ...] = ()

    # ------------------------------------------------------------------ connection
    def check_connection(self) -> Dict[str, Any]:
        """"Test connection": reachable, a protocol both speak (the newest: :attr:`protocol`), token accepted;
        the server's ``/info``.

        Raises:
            ServerUnavailableError, ProtocolMismatchError, AuthenticationError: as for the constructor.
        """
        info = self._request("GET", "/info", idempotent=True)
        offered = info.get("protocols") or [info.get("protocol")]  # a protocol-2 server names only "protocol"
        common = [v for v in self._protocols if v in offered]
        if not common:
            raise ProtocolMismatchError(
                f"The server at {self.url} speaks protocol {', '.join(map(str, offered))} (samvolseg "
                f"{info.get('version', '?')}), this client {', '.join(map(str, self._protocols))}; install the same "
                "SAMVolSegment version on both sides.")
        self.protocol = common[-1]
        self._prefix = api_prefix(self.protocol)
        self._http.headers[PROTOCOL_HEADER] = str(self.protocol)
        if info.get("auth_required") and "Authorization" not in self._http.headers:
            raise AuthenticationError(f"The server at {self.url} requires a token; pass token=... (the value of "
                                      "its --token / --token-file).")
        self._request("GET", f"{self._prefix}/stats", idempotent=True)  # the token is checked here
        return info

    # ------------------------------------------------------------------ protocol facts
    @property
    def model_id(self) -> str:
        """The server's model id (from ``/info``)."""
        return self._model_id

    @property
    def is_ready(self) -> bool:
        """True once the server has prepared the volume (asks the server until it is)."""
        with self._lock:
            if self._sid is None:
                return False
            if not self._ready:
                self._ready = bool(self._session_call("GET", "", idempotent=True).get("ready"))
            return self._ready

    @property
    def can_undo(self) -> bool:
        return self._can_undo

    @property
    def can_redo(self) -> bool:
        return self._can_redo

    @property
    def clicks(self) -> Tuple[RemoteClick, ...]:
        return self._clicks

    # ------------------------------------------------------------------ volume
    def set_volume(self, image: Any, ijk_to_ras: Optional[np.ndarray] = None) -> None:
        """Upload the volume (skipped when the server holds it) and start a server session on it.

        Args:
            image: a ``SimpleITK.Image`` (3D scalar) or a (k, j, i) numpy array with ``ijk_to_ras``.
        Raises:
            InvalidImageError: the image cannot be segmented (checked here, and by the server); the session
                keeps its previous volume.
        Warns:
            LabelMapWarning: the image looks like a label map (also in :attr:`image_warnings`), as locally.
            RemoteError: the server could not be reached or refused the upload.
        """
        array, matrix = _as_array(image, ijk_to_ras)
        volume_id = content_id(array, matrix)
        with self._lock:
            if volume_id == self._volume_id:
                return  # same content and geometry: keep clicks, mask and history (as the local session does)
            found = warn_about_image(array)  # before the upload, as the local session does
            self._report(0.0, "Compressing the volume for upload")
            body, meta = encode_volume(array, matrix)
            limits = self.info.get("limits", {})
            if array.size > int(limits.get("max_voxels", array.size)):
                raise InvalidImageError(f"The volume has {array.size} voxels; the server accepts at most "
                                        f"{limits['max_voxels']}. Crop or resample it first.")
            if len(body) > int(limits.get("max_upload_bytes", len(body))):
                raise InvalidImageError(f"The compressed volume is {len(body)} bytes; the server accepts at most "
                                        f"{limits['max_upload_bytes']}. Crop or resample it first.")
            self._upload(volume_id, body, meta)
            uploaded = self.last_upload_bytes
            sid, state, version = self._create_session(volume_id)
            old = self._sid
            self._reset_volume_state()
            self._mask_version = version
            self.last_upload_bytes = uploaded
            self._volume_id, self._upload_body, self._upload_meta = volume_id, body, meta
            self._shape = tuple(int(v) for v in array.shape)
            self._ijk_to_ras = matrix
            self._label = np.zeros(self._shape, np.uint8)
            self._sid = sid
            self.image_warnings = found
            self._apply_state(state)
            self.last_annotation = None
            if old is not None:
                self._delete_quietly(old)
            self._report(1.0, "Volume on the server")

    def wait_until_ready(self, timeout: Optional[float] = None) -> None:
        """Block until the server has prepared the volume; re-raises its error.

        Raises:
            SessionStateError: no volume yet.
            concurrent.futures.TimeoutError: not ready within ``timeout`` seconds.
        """
        with self._lock:
            self._require_volume()
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._ready:
                remaining = 25.0 if deadline is None else min(25.0, deadline - time.monotonic())
                if remaining <= 0:
                    raise concurrent.futures.TimeoutError(f"The server did not finish preparing the volume within "
                                                          f"{timeout} s.")
                reply = self._session_call("GET", "", params={"wait": f"{remaining:.3f}"}, idempotent=True,
                                           timeout=(self.timeout[0], remaining + self.timeout[1]))
                self._ready = bool(reply.get("ready"))

    # ------------------------------------------------------------------ steps
    def add_click(self, point_ras: Sequence[float], positive: bool = True) -> MaskUpdate:
        """Add a click (RAS mm) on the server and return the changed box.

        Raises:
            InvalidPromptError: not three finite numbers, or outside the volume (the server's check).
        """
        return self._step("click", {"point_ras": _as_list_point(point_ras, "click"), "positive": as_click_sign(positive)})

    def add_scribble(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> MaskUpdate:
        """Add a scribble ((N, 3) RAS mm, an open polyline) on the server (see ``InteractiveSession.add_scribble``).

        Raises:
            InvalidPromptError: not a list of finite points, or what the server's session refuses.
            ProtocolMismatchError: the server is a version without scribbles and lassos.
        """
        return self._stroke("scribble", points_ras, positive)

    def add_lasso(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> MaskUpdate:
        """Add a lasso ((N ≥ 3, 3) RAS mm, a closed contour on one plane) on the server (see
        ``InteractiveSession.add_lasso``); raises as :meth:`add_scribble`, and for points off one plane."""
        return self._stroke("lasso", points_ras, positive)

    def _stroke(self, kind: str, points_ras: Sequence[Sequence[float]], positive: bool) -> MaskUpdate:
        points = as_polyline_ras(points_ras, kind, min_points=1)
        if kind not in self.info.get("prompts", ()):
            raise ProtocolMismatchError(
                f"The server at {self.url} (samvolseg {self.info.get('version', '?')}) does not take {kind}s; update "
                "it to this client's version, or use clicks and boxes. Nothing was changed.")
        # Micrometres are plenty: rounding keeps a long stroke's JSON well inside the server's request limit.
        return self._step(kind, {"points_ras": np.round(points, 3).tolist(), "positive": as_click_sign(positive)})

    def proposal_classes(self) -> Tuple[str, ...]:
        """Class names the server's model can propose (from ``/info``)."""
        return tuple(str(c) for c in self.info.get("proposal_classes", ()))

    def adapted_classes(self) -> Tuple[str, ...]:
        """Structures the server model's clicks from scratch are adapted to (from ``/info``; empty from a server
        that does not say)."""
        return tuple(str(c) for c in self.info.get("adapted_classes", ()))

    def propose(self, class_name: str) -> MaskUpdate:
        """The server model's prompt-free proposal for ``class_name`` (see ``InteractiveSession.propose``).

        Raises:
            InvalidPromptError: the server's model does not know the class, or found nothing of it.
        """
        return self._step("propose", {"class": str(class_name)})

    def set_box(self, min_ras: Sequence[float], max_ras: Sequence[float]) -> MaskUpdate:
        """Limit the mask to an axis-aligned RAS box (see ``InteractiveSession.set_box``)."""
        return self._step("box", {"min_ras": _as_list_point(min_ras, "box corner"),
                                  "max_ras": _as_list_point(max_ras, "box corner")})

    def clear_box(self) -> MaskUpdate:
        """Remove the box limit."""
        return self._step("clear_box", {})

    def undo(self) -> MaskUpdate:
        """Undo the last step on the server (no model run there either)."""
        return self._step("undo", {})

    def redo(self) -> MaskUpdate:
        """Redo the last undone step."""
        return self._step("redo", {})

    def reset(self) -> MaskUpdate:
        """Back to the initial mask with no clicks (undoable)."""
        return self._step("reset", {})

    def set_initial_mask(self, mask_kji: Optional[np.ndarray]) -> MaskUpdate:
        """Start from an existing mask (uploaded as packed bits); None starts empty. Clears clicks and history.

        Raises:
            InvalidPromptError: the mask's shape is not the volume's.
        """
        with self._lock:
            self._require_volume()
            body = b""
            if mask_kji is not None:
                array = np.asarray(mask_kji)
                if array.shape != self._shape:
                    raise InvalidPromptError(
                        f"The initial mask has shape {array.shape} but the volume is {self._shape} (k, j, i); give "
                        "the segment's voxels on the input volume's grid.")
                if array.any():
                    body = encode_bits(array)
            reply = self._step_call("PUT", "/initial_mask", data=body)
            update = self._apply_reply(reply)
            self._initial_body = body
            self._ops = []
            self._undo_notes, self._redo_notes = [], []
            self.last_annotation = None
            return update

    def annotate_last_step(self, annotation: Any) -> None:
        """Attach caller data to the newest step (kept on this side; it travels with undo/redo).

        Raises:
            SessionStateError: there is no step to annotate.
        """
        with self._lock:
            if not self._undo_notes:
                raise SessionStateError("No step to annotate: call it right after add_click/set_box/reset.")
            self._undo_notes[-1] = annotation
            self.last_annotation = annotation

    # ------------------------------------------------------------------ outputs
    def mask_array_kji(self) -> np.ndarray:
        """The full mask (uint8, 1 = inside) on the input grid; a copy of the client's mirror (no round trip, except
        after a step that failed without a clear answer: then the mirror is fetched from the server first)."""
        with self._lock:
            self._require_volume()
            if self.protocol >= 3 and self._mask_version is None:
                self._fetch_mask()
            assert self._label is not None
            return self._label.copy()

    @property
    def geometry(self) -> VolumeGeometry:
        """The input volume's voxel grid (as ``InteractiveSession.geometry``)."""
        with self._lock:
            self._require_volume()
            return VolumeGeometry.from_matrix(self._ijk_to_ras, self._shape)

    def mask(self):
        """The full mask as a ``SimpleITK.Image`` with the input volume's geometry."""
        with self._lock:
            return self.geometry.to_sitk_image(self.mask_array_kji())

    def server_mask_array_kji(self) -> np.ndarray:
        """The full mask as the server holds it (one round trip; for checks and recovery)."""
        with self._lock:
            self._require_volume()
            if self.protocol >= 3:
                self._fetch_mask()  # the mirror becomes the server's mask (what differed is in the next update)
                assert self._label is not None
                return self._label.copy()
            reply = self._session_call("GET", "/mask", idempotent=True)
            return decode_update(reply["update"], self._shape).mask

    def close(self) -> None:
        """End the server session (best effort) and the connection; the session cannot be used afterwards."""
        with self._lock:
            if self._sid is not None:
                self._delete_quietly(self._sid)
                self._sid = None
            self._http.close()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals: steps
    def _step(self, op: str, payload: Dict[str, Any]) -> MaskUpdate:
        with self._lock:
            self._require_volume()
            start = time.perf_counter()
            reply = self._step_call("POST", f"/{op}", json=payload)
            update = self._apply_reply(reply)
            if len(self._ops) >= MAX_REPLAY_STEPS:
                self._ops_overflow = True
            else:
                self._ops.append((op, payload))
            if reply.get("pushed"):
                self._undo_notes.append(None)
                self._redo_notes.clear()
                del self._undo_notes[:-self._max_undo]
                self.last_annotation = None
            elif reply.get("moved"):
                source, target = ((self._undo_notes, self._redo_notes) if op == "undo"
                                  else (self._redo_notes, self._undo_notes))
                note = source.pop() if source else None
                target.append(note)
                self.last_annotation = note
            self.last_timing["total_s"] = time.perf_counter() - start
            return update

    def _apply_reply(self, reply: Dict[str, Any]) -> MaskUpdate:
        """Apply a step's reply to the mirror and the state; the update to return (with any recovery diff)."""
        assert self._label is not None
        started = time.perf_counter()
        if self.protocol >= 3:
            try:
                update = self._apply_delta(reply)
            except Exception:  # a reply that does not decode: the server moved on, this mirror did not
                self._mask_version = None
                raise
        else:
            update = decode_update(reply.get("update"), self._shape)
            update.apply_to(self._label)
        decoded_s = time.perf_counter() - started
        if self._pending_bbox is not None:  # recovery found differences outside this step's box
            update = MaskUpdate.covering(self._label, union_bbox(self._pending_bbox, update.bbox_kji))
            self._pending_bbox = None
        self._apply_state(reply.get("state", {}))
        timing = reply.get("timing") or {}
        self.last_timing = {str(k): float(v) for k, v in timing.items() if isinstance(v, (int, float))}
        if "total_s" in self.last_timing:
            self.last_timing["server_total_s"] = self.last_timing["total_s"]
        self.last_timing["client_decode_s"] = decoded_s  # decoding the reply and updating the mirror
        self.last_timing.update(self._recovery_timing)
        self._recovery_timing = {}
        return update

    def _apply_delta(self, reply: Dict[str, Any]) -> MaskUpdate:
        """Apply a protocol-3 reply's delta to the mirror; the step's box with its new content (as the local
        session returns it). A whole-mask reply (the server found another version) replaces the mirror and
        returns the box of everything that differed."""
        assert self._label is not None
        meta = reply.get("update")
        if not isinstance(meta, dict):
            raise WireFormatError("A protocol-3 reply lacks its update header; is the URL a samvolseg server?")
        bbox = check_bbox(meta.get("bbox"), self._shape)
        base, version = meta.get("base"), meta.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise WireFormatError(f"A protocol-3 reply has mask version {version!r}; expected an integer.")
        shape = tuple(hi - lo for lo, hi in bbox)
        delta = decode_delta(meta, reply.get(_PAYLOAD, b""), shape)  # checked before the mirror changes
        if base is None:  # the whole mask, from empty
            mask = np.zeros(self._shape, np.uint8)
            apply_delta(mask[tuple(slice(lo, hi) for lo, hi in bbox)], *delta)
            changed = _difference_box(self._label, mask)
            self._label = mask
            self._mask_version = version
            return MaskUpdate.empty() if changed is None else MaskUpdate(
                changed, mask[tuple(slice(lo, hi) for lo, hi in changed)].copy())
        if base != self._mask_version:  # the server answered another version than this mirror's: start over
            held, self._mask_version = self._mask_version, None
            raise WireFormatError(f"The server's reply applies to mask version {base}, this mirror holds {held}; "
                                  "the whole mask is fetched at the next step (or by mask_array_kji()).")
        box = self._label[tuple(slice(lo, hi) for lo, hi in bbox)]
        apply_delta(box, *delta)
        self._mask_version = version
        return MaskUpdate(bbox, box.copy())  # one copy (MaskUpdate.covering makes two)

    def _fetch_mask(self) -> None:
        """Protocol 3: replace the mirror by the server's whole mask (and its version); what differed goes into
        the next returned update."""
        reply = self._session_call("GET", "/mask", idempotent=True)
        update = self._apply_delta(reply)
        if not update.is_empty_box:
            self._pending_bbox = update.bbox_kji if self._pending_bbox is None else union_bbox(
                self._pending_bbox, update.bbox_kji)

    def _apply_state(self, state: Dict[str, Any]) -> None:
        self._can_undo = bool(state.get("can_undo", False))
        self._can_redo = bool(state.get("can_redo", False))
        self._clicks = tuple(RemoteClick(np.array(c[:3], dtype=np.float64), bool(c[3]))
                             for c in state.get("clicks", ()))

    # ------------------------------------------------------------------ internals: sessions and recovery
    def _session_call(self, method: str, suffix: str, **kwargs: Any) -> Dict[str, Any]:
        """A request on the current server session (naming the mirror's mask version); an expired session is
        recreated and replayed once."""
        assert self._sid is not None
        try:
            return self._request(method, f"{self._prefix}/sessions/{self._sid}{suffix}",
                                 **self._with_version(kwargs, self._mask_version))
        except SessionExpiredError:
            self._recover()
            return self._request(method, f"{self._prefix}/sessions/{self._sid}{suffix}",
                                 **self._with_version(kwargs, self._mask_version))

    def _step_call(self, method: str, suffix: str, **kwargs: Any) -> Dict[str, Any]:
        """:meth:`_session_call` for a step: unless the server clearly refused it (a 4xx or 503 answer: nothing
        ran), a failure marks the mirror unknown, since the step may have run."""
        self._last_status = None
        try:
            return self._session_call(method, suffix, **kwargs)
        except Exception:
            status = self._last_status
            if status is None or not (400 <= status < 500 or status == 503):
                self._mask_version = None
            raise

    def _with_version(self, kwargs: Dict[str, Any], version: Optional[int]) -> Dict[str, Any]:
        """``kwargs`` with the mask version header (protocol 3, known version); without it the server answers
        with the whole mask."""
        if self.protocol < 3 or version is None:
            return kwargs
        return {**kwargs, "headers": {**kwargs.get("headers", {}), MASK_VERSION_HEADER: str(version)}}

    def _recover(self) -> None:
        """New server session on the same volume, the initial mask and every step since; mirror checked."""
        if self._ops_overflow:
            raise SessionExpiredError(f"The server session expired and more than {MAX_REPLAY_STEPS} steps are too "
                                      "many to replay; call set_volume again to start over.")
        start = time.perf_counter()
        assert self._volume_id is not None and self._label is not None
        self._report(0.0, "The server session expired; restoring it")
        sid, _, version = self._create_session(self._volume_id)
        self._sid = sid
        self._ready = False
        self._mask_version = None  # the mirror is of the old session until the new one's mask is fetched
        prefix = f"{self._prefix}/sessions/{sid}"
        try:
            # Replayed steps name the new session's versions, so their (ignored) replies stay small deltas.
            if self._initial_body:
                version = _reply_version(self._request("PUT", f"{prefix}/initial_mask", data=self._initial_body,
                                                       **self._with_version({}, version)))
            for op, payload in self._ops:
                version = _reply_version(self._request("POST", f"{prefix}/{op}", json=payload,
                                                       **self._with_version({}, version)))
            reply = self._request("GET", f"{prefix}/mask", idempotent=True)
        except SessionExpiredError:
            raise SessionExpiredError("The server session expired again while it was being restored; the server "
                                      "is short of memory or its lease is very short. Try again later.") from None
        if self.protocol >= 3:
            changed = self._apply_delta(reply)
            bbox: Optional[BBoxKJI] = None if changed.is_empty_box else changed.bbox_kji
        else:
            server = decode_update(reply["update"], self._shape).mask
            bbox = _difference_box(self._label, server)
            self._label = server.astype(np.uint8)
        if bbox is not None:
            self._pending_bbox = bbox if self._pending_bbox is None else union_bbox(self._pending_bbox, bbox)
        self._apply_state(reply.get("state", {}))
        self._recovery_timing = {"recovery_s": time.perf_counter() - start, "replayed_steps": float(len(self._ops))}
        self._report(1.0, "Server session restored")

    def _create_session(self, volume_id: str) -> Tuple[str, Dict[str, Any], Optional[int]]:
        """(session id, state, mask version: 0, the empty mask, with protocol 3; else None)."""
        try:
            reply = self._request("POST", f"{self._prefix}/sessions", json={"volume": volume_id})
        except _VolumeNotFoundError:
            # Evicted from the server's memory (or the server restarted): send it again.
            if self._upload_body is None or volume_id != self._volume_id:
                raise
            self._upload(volume_id, self._upload_body, self._upload_meta)
            reply = self._request("POST", f"{self._prefix}/sessions", json={"volume": volume_id})
        self._max_undo = int(reply.get("max_undo", self._max_undo))
        self._model_id = str(reply.get("model_id", self._model_id))
        version = reply.get("mask_version") if self.protocol >= 3 else None
        return str(reply["session"]), reply.get("state", {}), version if isinstance(version, int) else None

    def _upload(self, volume_id: str, body: bytes, meta: Dict[str, Any]) -> None:
        import json

        path = f"{self._prefix}/volumes/{volume_id}"
        try:
            self._request("GET", path, idempotent=True)
            self.last_upload_bytes = 0  # the server already holds it
            return
        except _VolumeNotFoundError:
            pass
        self._report(0.1, f"Uploading the volume ({len(body) / 1e6:.1f} MB compressed)")
        # Idempotent: the id is the content, so a repeated upload stores the same thing (or is skipped).
        self._request("PUT", path, data=body, headers={META_HEADER: json.dumps(meta)}, timeout=UPLOAD_TIMEOUT,
                      idempotent=True)
        self.last_upload_bytes = len(body)

    def _delete_quietly(self, sid: str) -> None:
        try:
            self._request("DELETE", f"{self._prefix}/sessions/{sid}", timeout=(2.0, 5.0))
        except RemoteError:
            pass  # it expires by its lease anyway

    def _reset_volume_state(self) -> None:
        self._sid: Optional[str] = None
        self._volume_id: Optional[str] = None
        self._upload_body: Optional[bytes] = None
        self._upload_meta: Dict[str, Any] = {}
        self._shape: Tuple[int, int, int] = (0, 0, 0)
        self._ijk_to_ras = np.eye(4)
        self._label: Optional[np.ndarray] = None
        #: Protocol 3: the mask version the mirror holds; None when unknown (the server then sends the whole mask).
        self._mask_version: Optional[int] = None
        self._ready = False
        self._can_undo = self._can_redo = False
        self._clicks: Tuple[RemoteClick, ...] = ()
        self._ops: List[Tuple[str, Dict[str, Any]]] = []
        self._ops_overflow = False
        self._initial_body = b""
        self._undo_notes: List[Any] = []
        self._redo_notes: List[Any] = []
        self._pending_bbox: Optional[BBoxKJI] = None
        self._recovery_timing: Dict[str, float] = {}
        self.last_upload_bytes = 0

    def _require_volume(self) -> None:
        if self._sid is None or self._label is None:
            raise SessionStateError("No volume yet: call set_volume(image) before clicking.")

    def _report(self, fraction: float, message: str) -> None:
        if self._progress is not None:
            self._progress(fraction, message)

    # ------------------------------------------------------------------ internals: HTTP
    def _request(self, method: str, path: str, *, idempotent: bool = False, timeout: Any = None,
                 **kwargs: Any) -> Dict[str, Any]:
        """One request with error mapping; 503 (never run) retried; connection failures retried if idempotent."""
        url = self.url + path
        if "json" in kwargs:
            import json

            kwargs["data"] = json.dumps(kwargs.pop("json")).encode("utf-8")
            kwargs["headers"] = {**_JSON_HEADERS, **kwargs.get("headers", {})}
        busy = failures = 0
        while True:
            try:
                # verify passed per request: a session's own would lose to $REQUESTS_CA_BUNDLE/$CURL_CA_BUNDLE
                # (requests merges the environment over session settings), so cert.pem was silently ignored.
                response = self._http.request(method, url, timeout=timeout or self.timeout,
                                              verify=self._http.verify, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise tls_error(self.url, self._http.verify, _tls_reason(exc)) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if failures == 0 and not isinstance(exc, requests.exceptions.Timeout):
                    _raise_if_https_expected(self.url)
                failures += 1
                if idempotent and failures <= 2:
                    time.sleep(0.2 * failures)
                    continue
                timed_out = isinstance(exc, requests.exceptions.Timeout)
                what = "did not answer in time" if timed_out else "cannot be reached"
                hint = ("" if idempotent else " The step may or may not have run: check the mask before "
                        "repeating it.") if timed_out else ""
                raise ServerUnavailableError(
                    f"The server {self.url} {what} ({_reason(exc)}). Check that 'samvolseg serve' is running there, "
                    "the host and port, the firewall, and any HTTP proxy (set NO_PROXY for the server's host)."
                    + hint) from None
            if response.status_code == 503 and busy < self.max_busy_retries:
                busy += 1
                time.sleep(_retry_after(response))
                continue
            return self._reply(response)

    def _reply(self, response: requests.Response) -> Dict[str, Any]:
        self._last_status = response.status_code
        if response.ok and response.headers.get("content-type", "").startswith(UPDATE_MEDIA_TYPE):
            header, payload = decode_frame(response.content)  # protocol 3: JSON header + raw bytes
            header[_PAYLOAD] = payload
            return header
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.ok:
            if not isinstance(data, dict):
                raise RemoteError(f"The server at {self.url} sent a reply that is not JSON (HTTP "
                                  f"{response.status_code}); is the URL a samvolseg server?")
            return data
        error = data.get("error", "") if isinstance(data, dict) else ""
        detail = data.get("detail", "") if isinstance(data, dict) else ""
        detail = str(detail or response.reason or f"HTTP {response.status_code}")
        if response.status_code in (401, 403):
            raise AuthenticationError(f"The server at {self.url} refused the token: {detail}")
        if response.status_code == 410 or error in _GONE:
            raise SessionExpiredError(detail)
        if error == "VolumeNotFound":
            raise _VolumeNotFoundError(detail)
        if response.status_code == 503:
            raise ServerBusyError(f"{detail} (still busy after {self.max_busy_retries} retries)")
        cls = ERROR_CLASSES.get(error)
        if cls is not None:
            raise cls(detail)
        raise RemoteError(f"The server at {self.url} answered HTTP {response.status_code}: {detail}")


class _VolumeNotFoundError(RemoteError):
    """The server does not hold the volume (internal: the client uploads it)."""


@dataclass(frozen=True)
class RemoteBackend:
    """Where a batch or CLI run sends its sessions: a server URL, its token and how to check its certificate.

    Pass it as the ``model`` of :func:`SAMVolSegmentLib.batch.segment_volume`, ``run_case`` or ``segment_cases``
    (serial): each case then runs in a fresh :class:`RemoteSession` on the server's model. Picklable, and it
    holds no connection.
    """

    url: str
    token: Optional[str] = None
    verify: Union[bool, str] = True

    def open_session(self) -> RemoteSession:
        """A new :class:`RemoteSession` (checks the connection: :class:`RemoteError` subclasses if it fails)."""
        return RemoteSession(self.url, token=self.token, verify=self.verify)

    def __repr__(self) -> str:  # never the token (reports, logs)
        return f"RemoteBackend({self.url!r})"


# ---------------------------------------------------------------- helpers
def _as_array(image: Any, ijk_to_ras: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(k, j, i) voxels and the 4×4 matrix of a SimpleITK image or an array + matrix; local checks only."""
    if hasattr(image, "GetDimension") and hasattr(image, "GetSpacing"):  # SimpleITK, without importing it
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidImageError("Expected a 3D scalar volume; for a 4D series extract one time point, for a "
                                    "vector/RGB image one channel.")
        import SimpleITK as sitk

        geometry = VolumeGeometry.from_sitk(image)
        return sitk.GetArrayViewFromImage(image), geometry.ijk_to_ras
    array = np.asarray(image)
    if array.ndim != 3:
        raise InvalidImageError(f"Expected a 3D array in (k, j, i) order, got shape {array.shape}; give one 3D "
                                "scalar volume.")
    if ijk_to_ras is None:
        raise InvalidImageError("A numpy volume needs its 4×4 ijk_to_ras matrix; pass ijk_to_ras (Slicer: "
                                "GetIJKToRASMatrix).")
    if array.size == 0:
        raise InvalidImageError(f"The volume is empty (shape {array.shape}); load an image that has voxels.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InvalidImageError(f"Voxel type {array.dtype} is not a real scalar; convert the image to an integer "
                                "or float type.")
    geometry = VolumeGeometry.from_matrix(np.asarray(ijk_to_ras, dtype=np.float64), array.shape)
    return array, geometry.ijk_to_ras


#: How each client names the certificate to trust (the message cannot know which one the user is running).
TRUST_OPTIONS = ("--ca-file cert.pem (samvolseg segment/batch), verify='cert.pem' (RemoteSession) or, in "
                 "Slicer, Model and settings > CA / certificate")


def tls_error(url: str, verify: Union[bool, str], reason: str) -> TLSError:
    """A :class:`TLSError` naming the real cause of a failed TLS handshake with ``url`` and the fix.

    Args:
        url: the server URL as given.
        verify: what the client trusted (True: the system's CAs; a path: that file).
        reason: the TLS library's reason (OpenSSL's words).
    """
    text = reason.lower()
    host = urlparse(url).hostname or "?"
    plain = url.replace("https://", "http://", 1)
    if "mismatch" in text or "doesn't match" in text or "not valid for" in text:
        return TLSError(
            f"TLS: the server {url} presents a certificate that does not name '{host}' (hostname mismatch; "
            f"{reason}). Connect with a name or address the certificate lists (samvolseg serve --self-signed "
            f"prints them), or have the server's certificate cover this one: restart it with --self-signed --san "
            f"{host} and copy its new cert.pem to this machine. The trusted file is not the problem.", "hostname")
    if "expired" in text or "not yet valid" in text:
        return TLSError(
            f"TLS: the certificate of {url} has expired or is not yet valid ({reason}); check this machine's clock, "
            "and renew the server's certificate (samvolseg serve --self-signed replaces an expiring one) and copy "
            "it to the clients again.", "expired")
    plain_answer = ("wrong version number", "record layer failure", "packet length too long", "http request")
    if any(words in text for words in plain_answer):  # OpenSSL reading an HTTP reply as a TLS record
        return TLSError(
            f"TLS: {url} did not answer with TLS ({reason}): the server speaks plain HTTP; use {plain}, or start "
            "the server with --self-signed (or --ssl-certfile/--ssl-keyfile) for HTTPS.", "use-http")
    if "certificate verify failed" in text or "self-signed" in text or "self signed" in text \
            or "issuer certificate" in text:
        if isinstance(verify, str):
            return TLSError(
                f"TLS: the certificate of {url} is not the one in {verify}, nor signed by it ({reason}). The file "
                "is another server's certificate, or the server made a new one since it was copied: copy the "
                "server's current cert.pem (samvolseg serve --self-signed prints its path) and trust that one: "
                f"{TRUST_OPTIONS}.", "untrusted")
        return TLSError(
            f"TLS: the certificate of {url} is not signed by a CA this machine trusts ({reason}); a self-signed "
            "server certificate has to be trusted explicitly: copy the server's cert.pem (samvolseg serve "
            f"--self-signed prints its path; never the key) and pass it with {TRUST_OPTIONS}.", "untrusted")
    return TLSError(f"TLS with {url} failed ({reason}). Trust the server's certificate with {TRUST_OPTIONS}; if the "
                    f"server speaks plain HTTP, use {plain}.", "other")


def _raise_if_https_expected(url: str) -> None:
    """Raise :class:`TLSError` (``"use-https"``) when an ``http://`` URL's server completes a TLS handshake.

    A TLS server that gets plain HTTP closes the connection without a reply ("Remote end closed connection");
    one handshake, without certificate checks (nothing is sent over it), tells the two apart.
    """
    import socket
    import ssl

    parsed = urlparse(url)
    if parsed.scheme != "http" or parsed.hostname is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=3) as raw, \
                context.wrap_socket(raw, server_hostname=parsed.hostname):
            pass
    except (OSError, ValueError):
        return  # not TLS either: the caller reports the connection failure
    secure = url.replace("http://", "https://", 1)
    raise TLSError(f"TLS: the server {url} speaks HTTPS, not plain HTTP (it closed the connection without a "
                   f"reply): try {secure}, and trust its certificate with {TRUST_OPTIONS}.", "use-https")


def _retry_after(response: requests.Response) -> float:
    try:
        return min(10.0, max(0.05, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def _reason(exc: Exception) -> str:
    """The innermost reason of a requests error, short (no URL repeated, no object reprs)."""
    text = str(exc.args[0] if exc.args else exc)
    for marker in ("Caused by ", "SSLError(", "NewConnectionError("):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:200]


def _tls_reason(exc: Exception) -> str:
    """OpenSSL's words from a requests SSLError (e.g. "certificate verify failed: Hostname mismatch, ...")."""
    import re

    text = str(exc)
    match = re.search(r"\[SSL(?:: [A-Z_]+)?\] ?(.*?)\s*\(_ssl\.c", text)
    return match.group(1).strip() if match else _reason(exc)


def _as_list_point(value: Sequence[float], what: str) -> List[float]:
    """:func:`as_point_ras` as a JSON-ready list."""
    return [float(v) for v in as_point_ras(value, what)]


def _reply_version(reply: Dict[str, Any]) -> Optional[int]:
    """The mask version a protocol-3 step reply brings the mirror to (None for protocol 2)."""
    update = reply.get("update")
    version = update.get("version") if isinstance(update, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _difference_box(a: np.ndarray, b: np.ndarray) -> Optional[BBoxKJI]:
    """Half-open box of the voxels where two masks of one shape differ; None when they are equal."""
    different = np.not_equal(a, b)
    planes = np.flatnonzero(different.any(axis=(1, 2)))
    if not planes.size:
        return None
    columns = different[planes[0]:planes[-1] + 1].any(axis=0)
    rows, cols = np.flatnonzero(columns.any(axis=1)), np.flatnonzero(columns.any(axis=0))
    return ((int(planes[0]), int(planes[-1]) + 1), (int(rows[0]), int(rows[-1]) + 1),
            (int(cols[0]), int(cols[-1]) + 1))
