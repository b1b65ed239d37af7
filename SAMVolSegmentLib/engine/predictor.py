"""Encode a ROI once, decode every click: the predictor every front end (session, server, batch) uses.

The predictor talks to a model only through the model-family interface of ``docs/ARCHITECTURE.md``:
``encode_image`` (expensive, once per ROI, cached here) and ``decode_prompts`` (cheap, per click).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import InvalidPromptError
from .threads import ThreadPolicy, torch_threads

#: What a model's ``encode_image`` returns: one tensor (SAM-Med3D) or a tuple of tensors (ClickNet2 caches
#: features at two resolutions and the image).
Embedding = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def tensor_nbytes(embedding: Embedding) -> int:
    """Bytes held by an embedding's elements, all tensors of a tuple together (what the cache budget counts)."""
    if isinstance(embedding, torch.Tensor):
        return int(embedding.element_size() * embedding.nelement())
    return sum(tensor_nbytes(t) for t in embedding)


def _as_float(embedding: Embedding) -> Embedding:
    if isinstance(embedding, torch.Tensor):
        return embedding.float()
    return tuple(t.float() for t in embedding)


class EmbeddingCache:
    """LRU cache of image embeddings, bounded in bytes.

    Keys are hashable tuples (volume fingerprint, model id, ROI); values are embedding tensors. Inserting an
    entry evicts least-recently-used ones until the total fits ``max_bytes``; a single entry larger than the
    budget is not cached at all (the caller still gets its embedding).
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    def get(self, key: Hashable) -> Optional[Embedding]:
        """The cached embedding for ``key`` (marked most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Embedding) -> None:
        """Store ``value`` under ``key``, evicting old entries to stay within the byte budget."""
        size = tensor_nbytes(value)
        with self._lock:
            if key in self._entries:
                self._bytes -= tensor_nbytes(self._entries.pop(key))
            if size > self.max_bytes:
                return
            while self._entries and self._bytes + size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= tensor_nbytes(old)
            self._entries[key] = value
            self._bytes += size

    def invalidate(self, fingerprint: str) -> int:
        """Drop every entry of one volume (first key element == fingerprint); returns how many."""
        with self._lock:
            stale = [k for k in self._entries if isinstance(k, tuple) and k and k[0] == fingerprint]
            for k in stale:
                self._bytes -= tensor_nbytes(self._entries.pop(k))
            return len(stale)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


@dataclass(frozen=True)
class Prediction:
    """One decoder answer for one ROI.

    Attributes:
        low_res_logits: (1, 1, L, L, L) float32 logits on the ROI's low-res grid (L = ``config.low_res_size``),
            tensor order (R, A, S). Fed back as the next click's mask prompt.
        iou: the model's predicted IoU (quality estimate, not a measurement).
        decode_s: wall time of prompt encoder + mask decoder.
    """

    low_res_logits: torch.Tensor
    iou: float
    decode_s: float


class Predictor:
    """Runs a promptable model: ``embed`` once per ROI (cached), ``predict`` per click.

    Args:
        model: an ``nn.Module`` implementing ``encode_image``/``decode_prompts`` with ``config.image_size``,
            ``config.low_res_size`` and ``model_id`` (see docs/ARCHITECTURE.md).
        cache_bytes: budget of the embedding cache.
        threads: CPU threads of the encoder and the decoder (:class:`~.threads.ThreadPolicy`, N or "E,D"); None:
            ``$SAMVOLSEG_THREADS`` or the default (every CPU for the encoder, up to two for the decoder; see
            :mod:`.threads` for why).
    """

    def __init__(self, model: torch.nn.Module, cache_bytes: int = 1 << 30,
                 threads: Union[None, int, str, ThreadPolicy] = None) -> None:
        self.model = model.eval()
        self.cache = EmbeddingCache(cache_bytes)
        self.threads = ThreadPolicy.resolve(threads)
        self.encoder_calls = 0
        self.last_encode_s = 0.0

    @property
    def model_id(self) -> str:
        return str(getattr(self.model, "model_id", type(self.model).__name__))

    @property
    def accepts_box(self) -> bool:
        """True when the model takes a box prompt as an input (``decode_prompts(..., boxes_roi=...)``, ClickNet2
        with ``box_input``); the session then passes the box instead of clipping to it and clicking its centre."""
        return bool(getattr(self.model, "accepts_box", False))

    @property
    def takes_drawn_mask(self) -> bool:
        """True for a model trained with scribble/lasso voxels in its mask prompt (``ClickNet2Config.stroke_prompts``);
        the session then marks them there besides giving their clicks."""
        return bool(getattr(self.model, "takes_drawn_mask", False))

    @property
    def normalization(self) -> str:
        """The intensity normalisation the model's ROIs take (:func:`~.preprocessing.model_normalization`)."""
        from .preprocessing import model_normalization

        return model_normalization(self.model)

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def low_res_size(self) -> int:
        return int(self.model.config.low_res_size)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:  # a model without parameters still runs on the CPU
            return torch.device("cpu")

    def _precision(self):
        """Autocast context when the model was loaded with precision="bf16"/"fp16" (see ``load_model``)."""
        dtype = getattr(self.model, "autocast_dtype", None)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _full_key(self, cache_key: Hashable) -> Tuple[Hashable, ...]:
        return (*_as_tuple(cache_key), self.model_id)

    def cached_embedding(self, cache_key: Hashable) -> Optional[Embedding]:
        """The cached embedding for ``cache_key`` or None (lets callers skip cropping on a hit)."""
        embedding = self.cache.get(self._full_key(cache_key))
        if embedding is not None:
            self.last_encode_s = 0.0
        return embedding

    def embed(self, roi_image: np.ndarray, cache_key: Optional[Hashable] = None) -> Embedding:
        """Image embedding of one ROI, from the cache when ``cache_key`` was seen before.

        Args:
            roi_image: (S, S, S) float32, normalised, tensor order (R, A, S), S = ``image_size``.
            cache_key: hashable key, e.g. (volume fingerprint, ROI start); the model id is added here.
        Returns:
            the model's embedding for a batch of one (e.g. (1, 384, 8, 8, 8) for SAM-Med3D).
        """
        key = None if cache_key is None else self._full_key(cache_key)
        if key is not None:
            cached = self.cached_embedding(cache_key)
            if cached is not None:
                return cached
        size = self.image_size
        if tuple(roi_image.shape) != (size, size, size):
            raise ValueError(f"ROI image must be {size}³, got {tuple(roi_image.shape)}")
        start = time.perf_counter()
        with torch_threads(self.threads.encoder), torch.inference_mode(), self._precision():
            image = torch.from_numpy(np.ascontiguousarray(roi_image, dtype=np.float32))
            embedding = _as_float(self.model.encode_image(image[None, None].to(self.device)))
        self.encoder_calls += 1
        self.last_encode_s = time.perf_counter() - start
        if key is not None:
            self.cache.put(key, embedding)
        return embedding

    def predict(
        self,
        embedding: Embedding,
        points_roi: np.ndarray,
        positive: np.ndarray,
        mask_logits: Optional[torch.Tensor] = None,
        corrections: bool = False,
        box_roi: Optional[np.ndarray] = None,
    ) -> Prediction:
        """Decode one set of clicks on a cached embedding.

        Args:
            embedding: from :meth:`embed`.
            points_roi: (N, 3) float, ROI voxel indices in tensor order (R, A, S); N may be 0 when a mask
                prompt alone drives the decoder.
            positive: (N,) bool, True for foreground clicks.
            mask_logits: (1, 1, L, L, L) previous low-res logits (or a seed mask); zeros when None, as the
                reference loop does at the first click.
            corrections: the clicks correct a proposal (only models with proposal heads get it: it turns on
                an adapter trained for that, see ``AdapterConfig.clicknet2_decoder_scope``).
            box_roi: (2, 3) box prompt, lower and upper corner as continuous ROI voxel indices (R, A, S) (voxel v
                spans [v − 0.5, v + 0.5]), only for a model that :attr:`accepts_box`; None: no box.
        """
        if box_roi is not None and not self.accepts_box:
            raise InvalidPromptError("This model takes no box input; the session clips to the box instead.")
        points = np.asarray(points_roi, dtype=np.float32).reshape(-1, 3)
        labels = np.asarray(positive, dtype=bool).reshape(-1)
        if points.shape[0] != labels.shape[0]:
            raise InvalidPromptError(f"{points.shape[0]} points but {labels.shape[0]} labels: give one label per point")
        if not np.all(np.isfinite(points)):
            raise InvalidPromptError("click coordinates must be finite numbers")
        low = self.low_res_size
        device = self.device
        if mask_logits is None:
            mask_logits = torch.zeros((1, 1, low, low, low), dtype=torch.float32, device=device)
        start = time.perf_counter()
        with torch_threads(self.threads.decoder), torch.inference_mode(), self._precision():
            points_t = torch.from_numpy(points)[None].to(device)
            labels_t = torch.from_numpy(labels.astype(np.int64))[None].to(device)
            extra: dict = {"corrections": True} if corrections else {}
            if box_roi is not None:
                box = np.asarray(box_roi, dtype=np.float32).reshape(1, 2, 3)
                extra["boxes_roi"] = torch.from_numpy(box).to(device)
            logits, iou = self.model.decode_prompts(embedding, points_t, labels_t, mask_logits.to(device), **extra)
        return Prediction(
            low_res_logits=logits.float(), iou=float(iou.reshape(-1)[0]), decode_s=time.perf_counter() - start
        )


def _as_tuple(key: Hashable) -> Tuple[Hashable, ...]:
    return key if isinstance(key, tuple) else (key,)
