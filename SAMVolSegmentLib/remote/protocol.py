"""Wire format shared by the server and the client: version, headers, volume and mask codecs, error names.

Volumes travel once, as the C-order voxel bytes of their original dtype (int16 CT stays 2 bytes a voxel),
byte-shuffled (all first bytes of each voxel, then all second bytes: neighbouring CT voxels share their high
byte, which then compresses to almost nothing) and zlib-compressed, with the shape, dtype and the 4×4
``ijk_to_ras`` in a JSON header. The server rebuilds the exact float32 volume the client fingerprinted, so the
fingerprint in the URL verifies the upload end to end.

Protocol 2 (still served under ``/v2``, exactly as before): a step's reply carries only the box the step
changed: the half-open box ``((k0, k1), (j0, j1), (i0, i1))`` plus ``bits_bbox``, the part of the box that holds
foreground (every voxel of the box outside it is 0), whose voxels travel as packed bits (``np.packbits``, 8 voxels
a byte), compressed, base64 in JSON. A click's box is the model's whole region of interest (often 5-10× the
organ's bounding box), so sending only the foreground's box is what keeps a reply small. The compressor is
negotiated per request: the client names those it can decode in :data:`MASK_CODECS_HEADER`, best first, and the
server uses the first it has too (:data:`MASK_CODECS`; ``zlib`` is always available).

Protocol 3 (the default): a step's reply is binary (:func:`encode_frame`: a small JSON header, then the raw
compressed bytes; no base64) and carries the change against the client's mirror of the mask. Client and server
count the mask's versions: the client names the version its mirror holds in :data:`MASK_VERSION_HEADER`; the
server keeps the mask as of the version it last sent (one byte a voxel per session) and answers with the
difference (:func:`mask_delta`), or with the whole mask when the client names another version (a reply was lost,
a protocol-2 request changed the mask). The difference covers only the part of the step's box that changed and
travels as run lengths (:func:`encode_delta`): of the XOR against the mirror, or of the new content, whichever
compresses better by its count of runs (a refinement of a large organ moves its whole surface, and the XOR of two
surfaces has more runs than either; a small correction is a few runs of XOR), then compressed. Measured on the
phantom's liver (``benchmarks/results/remote_overhead.md``): run lengths + bz2 are 15-18 kB in about 4 ms where
packed bits + bz2 of the foreground box were 29 kB in 10-50 ms; run bytes of at most
:data:`SMALL_DELTA_BYTES` go as zlib, which is as small there and faster.

Pure numpy + stdlib: importable without torch, FastAPI or requests.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..engine.mask_update import BBoxKJI, MaskUpdate, union_bbox
from ..errors import (
    AuthenticationError,
    InvalidImageError,
    InvalidPromptError,
    ProtocolMismatchError,
    RemoteError,
    SAMVolSegmentError,
    ServerBusyError,
    SessionExpiredError,
    SessionStateError,
)

try:  # part of every CPython build that has libbz2 (Slicer's too); zlib is the fallback without it
    import bz2
except ImportError:  # pragma: no cover - depends on how Python was built
    bz2 = None  # type: ignore[assignment]
try:  # likewise with liblzma
    import lzma
except ImportError:  # pragma: no cover - depends on how Python was built
    lzma = None  # type: ignore[assignment]

#: Bumped on any incompatible change of endpoints or encodings.
#: 2: mask updates carry ``codec`` and ``bits_bbox`` (only the foreground's box travels), bz2 negotiable.
#: 3: binary step replies carrying the change against the client's mirror, with mask versions.
PROTOCOL_VERSION = 3
#: The versions this package speaks, oldest first: a server serves each under ``/v{N}``, and a client falls back
#: to the newest one a server offers (``/info``'s ``protocols``; a protocol-2 server has only ``protocol``: 2).
PROTOCOLS: Tuple[int, ...] = (2, 3)
#: Every client request names its protocol version here; a request to another version's endpoints gets 400.
PROTOCOL_HEADER = "X-SAMVolSeg-Protocol"
#: Protocol 3: the mask version the client's mirror holds (the ``version`` of the last reply it applied).
MASK_VERSION_HEADER = "X-SAMVolSeg-Mask-Version"
#: Content type of a protocol-3 step reply (:func:`encode_frame`); errors stay JSON.
UPDATE_MEDIA_TYPE = "application/vnd.samvolseg.update"
#: First bytes of a protocol-3 frame.
FRAME_MAGIC = b"SVU3"
#: JSON metadata of a binary body (volume upload, initial mask).
META_HEADER = "X-SAMVolSeg-Meta"
#: The mask codecs a client can decode, comma-separated, best first (``bz2, zlib``); without it: ``zlib``.
MASK_CODECS_HEADER = "X-SAMVolSeg-Mask-Codecs"


def api_prefix(version: int) -> str:
    """URL prefix of a protocol version's API (``/health`` and ``/info`` stay outside it so any version can read
    them)."""
    return f"/v{int(version)}"


#: URL prefix of this version's API.
API_PREFIX = api_prefix(PROTOCOL_VERSION)
#: Volumes are encoded as in protocol 2 in every version, so content ids keep that number and both protocols
#: share one volume store.
CONTENT_ID_VERSION = 2

VOLUME_CODEC = "zlib-shuffle"
#: Mask codecs this Python can encode and decode, best first (the client offers them in this order). On the run
#: lengths of a liver-sized mask (benchmarks/results/remote_overhead.md) bz2 is the smallest (about 16 kB, 4-8 ms to
#: compress), lzma (xz, preset 0) about 20 kB in 3 ms, zlib about 24 kB in 2 ms; on organ-sized masks all three
#: stay far below 20 kB.
MASK_CODECS: Tuple[str, ...] = tuple(name for name, module in (("bz2", bz2), ("lzma", lzma), ("zlib", zlib))
                                     if module is not None)
#: Voxel types a volume may be uploaded as (anything else is sent as float32); little-endian on the wire.
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: Largest physical extent of a volume along any axis (mm): beyond any scanner, and it keeps the server's
#: model-grid arithmetic finite (a header with 1e308 mm voxels is refused, not resampled).
MAX_EXTENT_MM = 1e6
#: zlib level for volumes: level 1 compresses shuffled CT nearly as well as 6 at several times the speed.
VOLUME_ZLIB_LEVEL = 1
#: zlib level for masks (9 is several times slower on a 1 MB box for about 15 % less).
MASK_ZLIB_LEVEL = 6
#: bz2 level for masks (its block size; a foreground box's packed bits fit one 900 kB block).
MASK_BZ2_LEVEL = 9
_LZMA_ERRORS: Tuple[type, ...] = (lzma.LZMAError,) if lzma is not None else ()
#: Run bytes up to this size are compressed with zlib whatever the client prefers (every client decodes zlib): an
#: organ's refinement compresses to a few kB with any codec, and zlib takes a fraction of bz2's time both ways.
SMALL_DELTA_BYTES = 24 << 10
#: lzma preset for masks: 0 compresses run lengths nearly as well as 6, several times faster.
MASK_LZMA_PRESET = 0

#: Error names the server puts in ``{"error": ..., "detail": ...}`` and the client raises again as these classes.
ERROR_CLASSES = {
    cls.__name__: cls
    for cls in (InvalidImageError, InvalidPromptError, SessionStateError, AuthenticationError, ServerBusyError,
                SessionExpiredError, ProtocolMismatchError, RemoteError)
}


class WireFormatError(SAMVolSegmentError, ValueError):
    """Bytes or metadata that do not decode (truncated, corrupt, oversize, or inconsistent with the header)."""


ERROR_CLASSES[WireFormatError.__name__] = WireFormatError


# ---------------------------------------------------------------- volumes
def content_id(array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> str:
    """Content id of a volume as uploaded: BLAKE2b-128 of :data:`CONTENT_ID_VERSION`, dtype, shape, matrix and
    voxels.

    The server stores volumes under this id, so a second upload of the same volume (by any client) is
    skipped, and it recomputes the id of every upload to verify it. A cryptographic hash, unlike the engine's
    CRC-based fingerprint, because here volumes of different users share one store. Needs no torch.
    """
    array = np.asarray(array_kji)
    name = array.dtype.name if array.dtype.name in VOLUME_DTYPES else "float32"
    wire = np.ascontiguousarray(array, dtype=np.dtype(name).newbyteorder("<"))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"samvolseg-volume/{CONTENT_ID_VERSION}/{name}/{wire.shape}".encode())
    digest.update(np.asarray(ijk_to_ras, dtype="<f8").reshape(-1).tobytes())
    digest.update(memoryview(wire).cast("B"))
    return digest.hexdigest()


def encode_volume(array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> Tuple[bytes, Dict[str, Any]]:
    """Body and metadata of a volume upload.

    Args:
        array_kji: the voxels in (k, j, i) order, any real dtype (not in ``VOLUME_DTYPES`` → float32).
        ijk_to_ras: the 4×4 voxel → RAS matrix.
    Returns:
        (compressed body, metadata dict for :data:`META_HEADER`).
    """
    array = np.asarray(array_kji)
    name = array.dtype.name if array.dtype.name in VOLUME_DTYPES else "float32"
    wire = np.ascontiguousarray(array, dtype=np.dtype(name).newbyteorder("<"))
    body = zlib.compress(_shuffle(wire), VOLUME_ZLIB_LEVEL)
    meta = {
        "shape": [int(v) for v in wire.shape],
        "dtype": name,
        "codec": VOLUME_CODEC,
        # repr of a Python float round-trips exactly, so the server's fingerprint matches the client's.
        "ijk_to_ras": [float(v) for v in np.asarray(ijk_to_ras, dtype=np.float64).reshape(-1)],
    }
    return body, meta


def check_volume_meta(meta: Any, max_voxels: int) -> Tuple[Tuple[int, int, int], np.dtype, np.ndarray]:
    """Validate upload metadata before any decompression; (shape, dtype, 4×4 matrix).

    Raises:
        WireFormatError: a field is missing or malformed, or the volume has more voxels than ``max_voxels``.
        InvalidImageError: the matrix is not a finite affine map, or the volume would be larger than
            :data:`MAX_EXTENT_MM` along an axis.
    """
    if not isinstance(meta, dict):
        raise WireFormatError(f"The {META_HEADER} header must be a JSON object with shape, dtype, codec, ijk_to_ras.")
    if meta.get("codec") != VOLUME_CODEC:
        raise WireFormatError(f"Volume codec {meta.get('codec')!r} is not supported; use {VOLUME_CODEC!r}.")
    shape = meta.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise WireFormatError(f"Volume shape {shape!r} must be three positive integers (k, j, i).")
    voxels = math.prod(shape)  # Python ints: a shape of 10**30 voxels is refused, not an overflow
    if voxels > max_voxels:
        raise WireFormatError(f"The volume has {voxels} voxels; this server accepts at most {max_voxels}. "
                              "Crop or resample the volume, or raise --max-voxels on the server.")
    if meta.get("dtype") not in VOLUME_DTYPES:
        raise WireFormatError(f"Volume dtype {meta.get('dtype')!r} is not one of {', '.join(VOLUME_DTYPES)}.")
    matrix = meta.get("ijk_to_ras")
    if (not isinstance(matrix, list) or len(matrix) != 16
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in matrix)):
        raise WireFormatError("ijk_to_ras must be a list of 16 numbers (the 4×4 matrix, row by row).")
    affine = np.array(matrix, dtype=np.float64).reshape(4, 4)
    if not np.all(np.isfinite(affine)) or not np.array_equal(affine[3], [0.0, 0.0, 0.0, 1.0]):
        raise InvalidImageError("ijk_to_ras must be a finite affine matrix (last row 0 0 0 1); check the image "
                              "header's spacing, direction and origin.")
    with np.errstate(over="ignore"):  # 1e308 mm voxels: an infinite extent, refused below
        extent = np.linalg.norm(affine[:3, :3], axis=0) * np.array(shape[::-1], dtype=np.float64)  # i, j, k
    if not np.all(extent <= MAX_EXTENT_MM):
        raise InvalidImageError(f"The volume would be {' × '.join(f'{v:.3g}' for v in extent)} mm; more than "
                              f"{MAX_EXTENT_MM:g} mm along an axis is not an image (check the voxel spacing in "
                              "its header).")
    return (shape[0], shape[1], shape[2]), np.dtype(meta["dtype"]).newbyteorder("<"), affine


def decode_volume(body: bytes, shape: Tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    """The voxels of an upload body; decompresses no more than the header announced (no zip bombs).

    Raises:
        WireFormatError: corrupt data, or a size other than ``shape`` × itemsize.
    """
    expected = math.prod(int(v) for v in shape) * dtype.itemsize
    raw = _inflate(body, expected, "volume", "zlib")
    return _unshuffle(raw, dtype).reshape(shape)


# ---------------------------------------------------------------- masks
def choose_mask_codec(accepted: Optional[str]) -> str:
    """The codec for replies to a client whose :data:`MASK_CODECS_HEADER` is ``accepted`` (None: zlib)."""
    for name in (accepted or "").split(","):
        if name.strip().lower() in MASK_CODECS:
            return name.strip().lower()
    return "zlib"


def encode_update(update: MaskUpdate, codec: str = "zlib") -> Dict[str, Any]:
    """JSON form of a mask update.

    ``{"bbox": [[k0, k1], [j0, j1], [i0, i1]], "codec": codec, "bits_bbox": [[...], ...], "bits": base64}``:
    ``bits_bbox`` is the foreground's box relative to ``bbox`` (all zero-size when the box has none), ``bits``
    its voxels (:func:`encode_bits`). Voxels of ``bbox`` outside ``bits_bbox`` are 0.

    Raises:
        WireFormatError: ``codec`` is not one of :data:`MASK_CODECS`.
    """
    _check_codec(codec)
    bbox = [[int(lo), int(hi)] for lo, hi in update.bbox_kji]
    inner = None if update.is_empty_box else foreground_box(update.mask)
    if inner is None:
        return {"bbox": bbox, "codec": codec, "bits_bbox": [[0, 0], [0, 0], [0, 0]], "bits": ""}
    bits = encode_bits(update.mask[tuple(slice(lo, hi) for lo, hi in inner)], codec)
    return {"bbox": bbox, "codec": codec, "bits_bbox": [list(pair) for pair in inner],
            "bits": base64.b64encode(bits).decode("ascii")}


def decode_update(data: Any, volume_shape: Optional[Sequence[int]] = None) -> MaskUpdate:
    """A :class:`MaskUpdate` from :func:`encode_update`'s JSON, checked against the volume's shape.

    Raises:
        WireFormatError: malformed box, a box outside the volume, a ``bits_bbox`` outside the box, an unknown
            codec, or bits that do not fill ``bits_bbox``.
    """
    if not isinstance(data, dict):
        raise WireFormatError("A mask update must be a JSON object with bbox, codec, bits_bbox and bits.")
    bbox = check_bbox(data.get("bbox"), volume_shape)
    shape = tuple(hi - lo for lo, hi in bbox)
    codec = data.get("codec")
    if codec not in MASK_CODECS:
        raise WireFormatError(f"Mask codec {codec!r} is not one of {', '.join(MASK_CODECS)} (this Python's).")
    bits = data.get("bits")
    if not isinstance(bits, str):
        raise WireFormatError("A mask update's bits must be a base64 string.")
    mask = np.zeros(shape, np.uint8)
    if math.prod(shape) == 0:
        return MaskUpdate(bbox, mask)
    inner = check_bbox(data.get("bits_bbox"), shape)
    inner_shape = tuple(hi - lo for lo, hi in inner)
    if math.prod(inner_shape) == 0:
        if bits:
            raise WireFormatError("A mask update has bits but an empty bits_bbox.")
        return MaskUpdate(bbox, mask)
    try:
        raw = base64.b64decode(bits.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise WireFormatError(f"A mask update's bits are not valid base64 ({exc}).") from None
    mask[tuple(slice(lo, hi) for lo, hi in inner)] = decode_bits(raw, inner_shape, codec)
    return MaskUpdate(bbox, mask)


def encode_bits(mask: np.ndarray, codec: str = "zlib") -> bytes:
    """Packed (8 voxels a byte), compressed bits of a mask (nonzero = inside)."""
    return _compress(np.packbits(np.asarray(mask) != 0, axis=None).tobytes(), codec)


def _compress(raw: bytes, codec: str) -> bytes:
    """``raw`` compressed with a mask codec at its level."""
    _check_codec(codec)
    if codec == "bz2":
        return bz2.compress(raw, MASK_BZ2_LEVEL)
    if codec == "lzma":
        return lzma.compress(raw, preset=MASK_LZMA_PRESET)
    return zlib.compress(raw, MASK_ZLIB_LEVEL)


def decode_bits(body: bytes, shape: Sequence[int], codec: str = "zlib") -> np.ndarray:
    """uint8 mask of ``shape`` from :func:`encode_bits`' bytes.

    Raises:
        WireFormatError: corrupt data or a size that does not match ``shape``.
    """
    count = math.prod(int(v) for v in shape)
    raw = _inflate(body, (count + 7) // 8, "mask", codec)
    return np.unpackbits(np.frombuffer(raw, np.uint8), count=count).reshape(tuple(int(v) for v in shape))


def _check_codec(codec: str) -> None:
    if codec not in MASK_CODECS:
        raise WireFormatError(f"Mask codec {codec!r} is not one of {', '.join(MASK_CODECS)}.")


def foreground_box(mask: np.ndarray) -> Optional[Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]]:
    """Half-open box of a 3D mask's nonzero voxels (None when there are none): one reduction over the mask, one
    over the planes that hold some (read as booleans: a 0/1 uint8 mask is not converted)."""
    array = np.asarray(mask)
    inside = array.view(bool) if array.dtype == np.uint8 and array.flags.c_contiguous else array != 0
    planes = np.flatnonzero(inside.reshape(inside.shape[0], -1).any(axis=1))
    if not planes.size:
        return None
    columns = inside[planes[0]:planes[-1] + 1].any(axis=0)  # (j, i)
    js, is_ = np.flatnonzero(columns.any(axis=1)), np.flatnonzero(columns.any(axis=0))
    return ((int(planes[0]), int(planes[-1]) + 1), (int(js[0]), int(js[-1]) + 1), (int(is_[0]), int(is_[-1]) + 1))


def check_bbox(value: Any, volume_shape: Optional[Sequence[int]]) -> BBoxKJI:
    """A half-open box from JSON, inside ``volume_shape`` (when given) unless all-empty.

    Raises:
        WireFormatError: not three integer pairs, inverted, negative, or outside the volume.
    """
    try:
        bbox = tuple((int(lo), int(hi)) for lo, hi in value)
        ok = len(bbox) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) for pair in value for v in pair)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise WireFormatError(f"A mask box must be [[k0, k1], [j0, j1], [i0, i1]] integers, got {value!r}.")
    empty = all(hi - lo == 0 for lo, hi in bbox)
    if any(hi < lo or lo < 0 for lo, hi in bbox):
        raise WireFormatError(f"Mask box {value!r} is inverted or negative.")
    if volume_shape is not None and not empty and any(hi > n for (_, hi), n in zip(bbox, volume_shape)):
        raise WireFormatError(f"Mask box {value!r} reaches outside the volume {tuple(volume_shape)}.")
    return bbox  # type: ignore[return-value]


# ---------------------------------------------------------------- protocol 3: mask deltas and frames
#: Forms of a delta: runs of the XOR against the mirror, or runs of the box's new content.
DELTA_FORMS = ("xor", "set")
#: A run of the XOR costs about twice the bytes of a run of the new content once compressed (its lengths are
#: more random; measured on liver-sized masks), so ``set`` is chosen unless the XOR has under half its runs.
_XOR_RUN_COST = 2
#: A run this long or longer is an escape byte in the run bytes plus a little-endian uint32 after them.
_RUN_ESCAPE = 255


@dataclass(frozen=True)
class BoxChange:
    """What a step changed inside its box, as :func:`mask_delta` finds it: ``region`` (relative to the box) holds
    every voxel that can differ, ``xor`` and ``new`` are the XOR of its old and new content and its new content."""

    region: BBoxKJI
    xor: np.ndarray
    new: np.ndarray


def mask_delta(mirror: np.ndarray, update: MaskUpdate, mirror_box: Optional[BBoxKJI]
               ) -> Tuple[Optional[BoxChange], Optional[BBoxKJI]]:
    """Write ``update`` into ``mirror`` (in place); (what changed in the update's box, the mirror's new foreground
    bound). The server calls it in step order, so its mirror stays the mask as of the version it last sent.

    Args:
        mirror: the full mask as the client holds it (uint8, 0/1).
        update: the step's box and its new content.
        mirror_box: a box that holds all of the mirror's foreground (None: the mirror is empty). Only the part of
            the update's box inside it or inside the new content's foreground box can change, so only that part is
            compared and written: a small organ in a large region of interest costs its own size.
    Returns:
        (None when the box is empty or nothing in it is or was foreground, else the change; a box holding all of
        the mirror's foreground afterwards, or None when it is empty).
    """
    if update.is_empty_box:
        return None, mirror_box
    new_box = foreground_box(update.mask)
    origin = [lo for lo, _ in update.bbox_kji]
    old_box = None if mirror_box is None else _intersect(
        tuple((lo - o, hi - o) for (lo, hi), o in zip(mirror_box, origin)), update.mask.shape)
    region = old_box if new_box is None else new_box if old_box is None else union_bbox(old_box, new_box)
    bound = mirror_box
    if new_box is not None:
        shifted = tuple((lo + o, hi + o) for (lo, hi), o in zip(new_box, origin))
        bound = shifted if bound is None else union_bbox(bound, shifted)  # type: ignore[arg-type]
    if region is None:
        return None, bound
    part = tuple(slice(lo, hi) for lo, hi in region)
    target = mirror[update.slices][part]
    new = update.mask[part]
    xor = np.bitwise_xor(target, new)
    target[...] = new
    return BoxChange(region, xor, new), bound  # type: ignore[arg-type]


def _intersect(box: Sequence[Tuple[int, int]], shape: Sequence[int]) -> Optional[BBoxKJI]:
    """The part of a half-open box inside ``(0, n)`` per axis; None when there is none."""
    clipped = tuple((max(0, lo), min(int(n), hi)) for (lo, hi), n in zip(box, shape))
    return None if any(hi <= lo for lo, hi in clipped) else clipped  # type: ignore[return-value]


def encode_delta(xor: Optional[np.ndarray], new: Optional[np.ndarray], codec: str = "zlib",
                 origin: Sequence[int] = (0, 0, 0)) -> Tuple[Dict[str, Any], bytes]:
    """Header fields and payload of a delta over a box: run lengths of the part of the box that changed, in the
    form that compresses better, compressed.

    Args:
        xor: the box's XOR against the mirror (:func:`mask_delta`), or None when the mirror is to be cleared
            first (a whole-mask reply: then ``new`` is the whole mask and the form is ``set``).
        new: the box's new content (0/1 uint8); None with ``xor`` None: an empty box.
        codec: one of :data:`MASK_CODECS`, the client's choice (:func:`choose_mask_codec`); run bytes of at most
            :data:`SMALL_DELTA_BYTES` use zlib.
        origin: where ``xor`` and ``new`` start in the step's box (:attr:`BoxChange.region`).
    Returns:
        (``{"form", "box", "codec", "runs", "big"}``, compressed run bytes): ``box`` is the changed part, relative
        to the step's box (voxels of the box outside it did not change); form ``"none"`` and no bytes when nothing
        changed (or, for a whole mask, when it is empty).
    """
    _check_codec(codec)
    if new is None or new.size == 0:
        return {"form": "none"}, b""
    changed = foreground_box(new if xor is None else xor)
    if changed is None:
        return {"form": "none"}, b""
    part = tuple(slice(lo, hi) for lo, hi in changed)
    form, edges = ("set", _run_edges(new[part])) if xor is None else ("xor", _run_edges(xor[part]))
    if form == "xor":
        count = int(np.count_nonzero(edges))  # runs - 1, counted before any run is collected
        if count > 64:  # not trivially small: the new content may be cheaper (a whole surface moved)
            set_edges = _run_edges(new[part])
            if int(np.count_nonzero(set_edges)) < _XOR_RUN_COST * count:
                form, edges = "set", set_edges
    raw, count, big = runs_to_bytes(_runs_from_edges(edges))
    box = [[lo + o, hi + o] for (lo, hi), o in zip(changed, origin)]
    if len(raw) <= SMALL_DELTA_BYTES:  # small already: zlib is as good as small, and fastest at both ends
        codec = "zlib"
    return {"form": form, "box": box, "codec": codec, "runs": count, "big": big}, _compress(raw, codec)


def decode_delta(meta: Any, body: bytes, shape: Sequence[int]
                 ) -> Tuple[str, Tuple[slice, ...], Optional[np.ndarray]]:
    """(form, the changed part of a box of ``shape`` as slices, its uint8 values) of :func:`encode_delta`'s output;
    values None for form ``none``.

    Raises:
        WireFormatError: an unknown form or codec, a part outside the box, counts that do not fit it, or corrupt
            data.
    """
    if not isinstance(meta, dict):
        raise WireFormatError("A delta must be a JSON object with form, box, codec, runs and big.")
    form = meta.get("form")
    if form == "none":
        if body:
            raise WireFormatError("A delta of form 'none' carries bytes.")
        return "none", (), None
    if form not in DELTA_FORMS:
        raise WireFormatError(f"Delta form {form!r} is not one of none, {', '.join(DELTA_FORMS)}.")
    codec = meta.get("codec")
    if codec not in MASK_CODECS:
        raise WireFormatError(f"Mask codec {codec!r} is not one of {', '.join(MASK_CODECS)} (this Python's).")
    part = check_bbox(meta.get("box"), shape)
    part_shape = tuple(hi - lo for lo, hi in part)
    size = math.prod(part_shape)
    count, big = meta.get("runs"), meta.get("big")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, big)) \
            or not 1 <= count <= size + 1 or not 0 <= big <= count:
        raise WireFormatError(f"A delta over {size} voxels cannot have {count!r} runs ({big!r} long ones).")
    raw = _inflate(body, count + 4 * big, "mask delta", codec)
    runs = bytes_to_runs(raw, count, big)
    if int(runs.sum()) != size:
        raise WireFormatError(f"The delta's runs cover {int(runs.sum())} voxels, its box {size}; the reply is "
                              "corrupt: fetch the whole mask again.")
    values = np.repeat((np.arange(count) & 1).astype(np.uint8), runs)
    return form, tuple(slice(lo, hi) for lo, hi in part), values.reshape(part_shape)


def apply_delta(target: np.ndarray, form: str, part: Tuple[slice, ...], values: Optional[np.ndarray]) -> None:
    """Apply :func:`decode_delta`'s output to ``target`` (the mirror's box, a view) in place."""
    if form == "xor":
        view = target[part]
        np.bitwise_xor(view, values, out=view)
    elif form == "set":
        target[part] = values


def mask_runs(mask: np.ndarray) -> np.ndarray:
    """Lengths of the alternating runs of a 0/1 mask in C order, zeros first (that run may be 0 long); int64.
    Two passes over the mask (compare neighbours, then collect the boundaries)."""
    return _runs_from_edges(_run_edges(mask))


def _run_edges(mask: np.ndarray) -> np.ndarray:
    """Where a run of a 0/1 mask starts, in C order (bool, flat; the first voxel starts one if it is 1)."""
    flat = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1)
    edges = np.empty(flat.size, bool)
    edges[0] = flat[0] != 0
    np.not_equal(flat[1:], flat[:-1], out=edges[1:])
    return edges


def _runs_from_edges(edges: np.ndarray) -> np.ndarray:
    """Run lengths from :func:`_run_edges`."""
    return np.diff(np.flatnonzero(edges), prepend=0, append=edges.size)


def runs_to_bytes(runs: np.ndarray) -> Tuple[bytes, int, int]:
    """(bytes, run count, long runs): one byte a run, runs of 255 or more as the escape 255 and a little-endian
    uint32 after all run bytes."""
    runs = np.asarray(runs, dtype=np.int64)
    if runs.size and int(runs.max()) >= 1 << 32:
        raise WireFormatError("A run longer than 2**32 voxels; the box is too large for this protocol.")
    small = np.minimum(runs, _RUN_ESCAPE).astype(np.uint8)
    long_runs = runs[runs >= _RUN_ESCAPE].astype("<u4")
    return small.tobytes() + long_runs.tobytes(), int(runs.size), int(long_runs.size)


def bytes_to_runs(raw: bytes, count: int, big: int) -> np.ndarray:
    """Inverse of :func:`runs_to_bytes`.

    Raises:
        WireFormatError: the escapes and the long runs do not match.
    """
    small = np.frombuffer(raw, np.uint8, count=count)
    runs = small.astype(np.int64)
    escaped = small == _RUN_ESCAPE
    if int(np.count_nonzero(escaped)) != big:
        raise WireFormatError("The delta's run bytes do not match its count of long runs; the reply is corrupt.")
    runs[escaped] = np.frombuffer(raw, "<u4", count=big, offset=count)
    return runs


def encode_frame(header: Dict[str, Any], payload: bytes = b"") -> bytes:
    """A protocol-3 reply body: :data:`FRAME_MAGIC`, the JSON header's length (uint32, big-endian), the header
    (UTF-8 JSON), then the payload's raw bytes."""
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return FRAME_MAGIC + len(text).to_bytes(4, "big") + text + payload


def decode_frame(body: bytes) -> Tuple[Dict[str, Any], bytes]:
    """(header, payload) of :func:`encode_frame`'s bytes.

    Raises:
        WireFormatError: not a frame, truncated, or a header that is not a JSON object.
    """
    if len(body) < 8 or body[:4] != FRAME_MAGIC:
        raise WireFormatError("The reply is not a protocol-3 frame; is the URL a samvolseg server of this version?")
    length = int.from_bytes(body[4:8], "big")
    if 8 + length > len(body):
        raise WireFormatError("The reply frame is truncated (its header is longer than the reply); send it again.")
    return parse_json(bytes(body[8:8 + length]), "reply header"), bytes(body[8 + length:])


# ---------------------------------------------------------------- errors
def error_body(error: str, detail: str) -> Dict[str, str]:
    """The JSON of every error reply: the error class name and a message that names the fix."""
    return {"error": error, "detail": detail}


def parse_json(body: bytes, what: str) -> Dict[str, Any]:
    """A JSON object from a request body.

    Raises:
        WireFormatError: not UTF-8 JSON, or not an object.
    """
    try:
        data = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireFormatError(f"The {what} body is not valid JSON ({exc}); send a JSON object.") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise WireFormatError(f"The {what} body nests too deeply; send a flat JSON object.") from None
    if not isinstance(data, dict):
        raise WireFormatError(f"The {what} body must be a JSON object, got {type(data).__name__}.")
    return data


# ---------------------------------------------------------------- helpers
def _shuffle(array: np.ndarray) -> bytes:
    """Byte planes: byte 0 of every voxel, then byte 1, ... (blosc's SHUFFLE filter, in numpy)."""
    if array.dtype.itemsize == 1:
        return array.tobytes()
    return np.ascontiguousarray(array.reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize).T).tobytes()


def _unshuffle(raw: bytes, dtype: np.dtype) -> np.ndarray:
    planes = np.frombuffer(raw, np.uint8)
    if dtype.itemsize == 1:
        return planes.view(dtype).copy()
    return np.ascontiguousarray(planes.reshape(dtype.itemsize, -1).T).view(dtype).reshape(-1)


def _inflate(body: bytes, expected: int, what: str, codec: str) -> bytes:
    """Decompress exactly ``expected`` bytes; refuse more (a zip bomb), fewer (truncated) or trailing data."""
    _check_codec(codec)
    try:
        if codec in ("bz2", "lzma"):
            unpack = bz2.BZ2Decompressor() if codec == "bz2" else lzma.LZMADecompressor(lzma.FORMAT_XZ)
            raw = unpack.decompress(body, expected)
            complete = unpack.eof and not unpack.unused_data
        else:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(body, expected)
            complete = inflater.eof and not inflater.unconsumed_tail and not inflater.unused_data
    except (zlib.error, OSError, EOFError, *_LZMA_ERRORS) as exc:  # bz2 reports corrupt data as OSError
        raise WireFormatError(f"The {what} data is corrupt ({exc}); send it again.") from None
    if len(raw) != expected or not complete:
        raise WireFormatError(f"The {what} data does not match its header: expected {expected} bytes after "
                              "decompression; the upload was truncated or the header is wrong.")
    return raw


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): only this machine can connect. The server
    CLI asks it (a token is required otherwise, and plain HTTP gets a warning); the client bypasses any HTTP
    proxy of the environment for such hosts."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
