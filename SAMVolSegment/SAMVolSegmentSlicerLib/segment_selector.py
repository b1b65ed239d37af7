"""The panel's segment selector (``qMRMLSegmentSelectorWidget``) kept in step with the parameter node's target.

MRML/Qt glue moved out of ``SAMVolSegment.py``, so it follows Slicer's camelCase. The selector emits
``currentSegmentChanged`` when code sets it (``setCurrentSegmentID``) and when it repopulates by itself after a
segment is added or removed (Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.cxx): only the user's own picks may
change the target.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class SelectorSync:
    """Shows the parameter node's target in the selector and tells the user's picks from the selector's own."""

    def __init__(self, selector) -> None:
        self.selector = selector
        #: True while code sets the selector: its signals then are not the user's.
        self.syncing = False

    @contextlib.contextmanager
    def synced(self) -> Iterator[None]:
        self.syncing = True
        try:
            yield
        finally:
            self.syncing = False

    def show(self, pn) -> None:
        """Show the parameter node's segmentation and segment."""
        if pn is None:
            return
        with self.synced():
            if self.selector.currentNode() is not pn.segmentationNode:
                self.selector.setCurrentNode(pn.segmentationNode)
            if pn.segmentID and self.selector.currentSegmentID() != pn.segmentID:
                self.selector.setCurrentSegmentID(pn.segmentID)

    def pickedSegment(self, pn, segmentID: str) -> str:
        """The target a ``currentSegmentChanged(segmentID)`` stands for.

        When the target segment was deleted elsewhere (Segmentations module, Segment Editor), the selector falls
        back to another segment by itself; that is not the user's choice, so the answer is "" (the next click
        creates a new segment) and the selector shows None again.
        """
        segmentation = pn.segmentationNode
        if pn.segmentID and segmentation is not None and segmentation.GetSegmentation().GetSegment(pn.segmentID) is None:
            with self.synced():
                self.selector.setCurrentSegmentID("")
            return ""
        return segmentID or ""
