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
