"""Read and write segment voxels on the input volume's grid, the way a Segment Editor effect would.

MRML glue (imports ``slicer``), so it follows Slicer's camelCase; the array work it relies on (``vtk_numpy``,
``segment_merge``) is plain numpy and tested on its own. One :class:`SegmentIO` serves one target: a
segmentation node and the volume whose grid the engine works on.

Every write goes through ``SetBinaryLabelmapToSegment`` with ``MODE_REPLACE`` on the segment's own voxels plus the
written box (the call replaces the whole segment), on the grid the segment is *stored* on: its labelmap layer's
grid, or the segmentation's reference geometry for an empty segment. That grid may differ from the input
volume's (a cropped input, an oversampled segmentation, a volume moved by its transform): the box is mapped
onto it and only the stored voxels whose centres fall in the box change, so voxels outside the volume's grid
never change, a shared layer is never resampled (the other segments keep their detail) and the cost scales with
the segment, not the layer. Each write records the stored box before and after (``StoredPatch``), so undo and redo
give back exactly what was stored. Slicer separates the segment from a shared layer when needed, re-converts
the closed surface and fires the events views need.
"""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Tuple

import numpy as np
import slicer
import vtk

from SAMVolSegmentLib.engine.mask_update import BBoxKJI, MaskUpdate, union_bbox

from . import coordinates, vtk_numpy
from .segment_merge import EditPolicy, MaskMode, OtherSegment, OtherSegments, OverwriteMode, merge_region
from .undo_stack import EditStep, Prompt, RegionEdit, StoredPatch


class SegmentWriteError(RuntimeError):
    """Slicer refused a write; the message names the fix."""


def nodeToWorldMatrix(node) -> np.ndarray:
    """4×4 parent transform of a transformable node to world; raises if it is not linear."""
    transformNode = node.GetParentTransformNode() if node else None
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise ValueError(f"'{node.GetName()}' is under a non-linear transform: harden the transform first "
                         "(Data module, right-click the node, 'Harden transform').")
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volumeIjkToWorld(volumeNode) -> np.ndarray:
    """Voxel (i, j, k) → world RAS of a volume, parent transforms and oblique directions included."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    return coordinates.ijk_to_world(slicer.util.arrayFromVTKMatrix(ijkToRas), nodeToWorldMatrix(volumeNode))


def editPolicyFromSegmentEditor(segmentEditorNode, otherSegments: OtherSegments = OtherSegments.PROTECT,
                                useMasking: bool = True) -> EditPolicy:
    """The :class:`EditPolicy` of the Segment Editor's current masking/overwrite settings."""
    if segmentEditorNode is None or not useMasking:
        return EditPolicy(other_segments=otherSegments)
    maskMode = next((m for m in MaskMode if getattr(slicer.vtkMRMLSegmentationNode, "EditAllowed" + m.value, None)
                     == segmentEditorNode.GetMaskMode()), MaskMode.Everywhere)
    overwrite = next((o for o in OverwriteMode
                      if getattr(slicer.vtkMRMLSegmentEditorNode, "Overwrite" + o.value.rstrip("_"), None)
                      == segmentEditorNode.GetOverwriteMode()), OverwriteMode.AllSegments)
    intensityRange = None
    if segmentEditorNode.GetSourceVolumeIntensityMask():
        intensityRange = tuple(segmentEditorNode.GetSourceVolumeIntensityMaskRange())
    return EditPolicy(mask_mode=maskMode, mask_segment_id=segmentEditorNode.GetMaskSegmentID() or None,
                      intensity_range=intensityRange, other_segments=otherSegments, overwrite_mode=overwrite)


def geometryFingerprint(volumeNode, segmentationNode) -> Tuple:
    """What the volume-grid mapping of a :class:`SegmentIO` depends on: the volume's IJK -> world (spacing, origin,
    directions, parent transforms), its voxel array's shape, and the segmentation's node -> world."""
    image = volumeNode.GetImageData()
    return (volumeIjkToWorld(volumeNode).round(6).tobytes(),
            tuple(image.GetDimensions()) if image is not None else None,
            nodeToWorldMatrix(segmentationNode).round(6).tobytes())


def _integerOffset(indexToIndex: np.ndarray) -> Optional[Tuple[int, int, int]]:
    """(k, j, i) offset when a 4×4 index -> index matrix is a whole-voxel translation (aligned grids), else None."""
    offset = indexToIndex[:3, 3]
    if (np.allclose(indexToIndex[:3, :3], np.eye(3), atol=1e-6)
            and np.allclose(offset, np.rint(offset), atol=coordinates.GRID_ATOL_MM)):
        i, j, k = (int(v) for v in np.rint(offset))
        return (k, j, i)
    return None


def _matrixKey(matrix: np.ndarray) -> Tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(matrix, float).round(6).ravel())


class SegmentIO:
    """Segment voxels of one segmentation, as bool arrays of boxes of one volume's (k, j, i) grid."""

    def __init__(self, volumeNode, segmentationNode) -> None:
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.ijkToWorld = volumeIjkToWorld(volumeNode)
        self.shapeKji: Tuple[int, int, int] = tuple(int(n) for n in slicer.util.arrayFromVolume(volumeNode).shape)
        self.fingerprint = geometryFingerprint(volumeNode, segmentationNode)
        #: Volume IJK -> the segmentation's local frame, and its inverse (read once: every segment uses them).
        self._ijkToSegmentation = np.linalg.inv(nodeToWorldMatrix(segmentationNode)) @ self.ijkToWorld
        self._segmentationToIjk = np.linalg.inv(self._ijkToSegmentation)

    def isStale(self) -> bool:
        """True when the volume's grid (IJK -> RAS, parent transforms, shape) or the segmentation's transform
        changed since this object read them: it must be rebuilt before the next step."""
        return geometryFingerprint(self.volumeNode, self.segmentationNode) != self.fingerprint

    # ------------------------------------------------------------------ geometry
    def ijkToSegmentationMatrix(self) -> vtk.vtkMatrix4x4:
        """Volume IJK → the segmentation's local frame: the ImageToWorld matrix of the labelmaps written."""
        return slicer.util.vtkMatrixFromArray(self._ijkToSegmentation)

    def ensureReferenceGeometry(self) -> None:
        """Give the segmentation the volume's grid when it has no reference geometry yet.

        The test is on the geometry string, not on the reference-node role: a segmentation loaded from a
        ``.seg.nrrd`` has a geometry but no reference node, and overwriting it would resample its segments.
        """
        name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        if not self.segmentationNode.GetSegmentation().GetConversionParameter(name):
            self.segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        if self.segmentationNode.GetDisplayNode() is None:
            self.segmentationNode.CreateDefaultDisplayNodes()

    def checkWritable(self, segmentID: str, policy: EditPolicy) -> None:
        """Raise before any engine work when a write would fail, so a step never half-happens."""
        segmentation = self.segmentationNode.GetSegmentation()
        if segmentation.GetSegment(segmentID) is None:
            raise SegmentWriteError("The target segment was deleted; select or create another segment.")
        self.checkLabelmapSource()
        if policy.mask_mode is MaskMode.InsideSingleSegment and (
                not policy.mask_segment_id or segmentation.GetSegment(policy.mask_segment_id) is None):
            raise SegmentWriteError("The Segment Editor's masking segment no longer exists: pick it again under "
                                    "'Editable area', or set the editable area to 'Everywhere'.")

    def checkLabelmapSource(self) -> None:
        """Raise unless the segmentation's source representation is a binary labelmap (the only one written)."""
        labelmapName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        if self.segmentationNode.GetSegmentation().GetSourceRepresentationName() != labelmapName:
            raise SegmentWriteError(
                "The segmentation's source representation is not a binary labelmap (it was made from a model or "
                "a surface): in the Segmentations module, Representations, make 'Binary labelmap' the source.")

    # ------------------------------------------------------------------ reading
    def segmentArray(self, segmentID: str) -> np.ndarray:
        """The whole segment on the volume grid (uint8), e.g. to seed the engine when editing it."""
        full: BBoxKJI = tuple((0, n) for n in self.shapeKji)  # type: ignore[assignment]
        return self.readRegion(segmentID, full).astype(np.uint8)

    def readRegion(self, segmentID: str, bbox: BBoxKJI) -> np.ndarray:
        """A segment's voxels in a box of the volume's grid (bool), resampled if stored on another grid."""
        segmentationNode = self.segmentationNode
        labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        shape = tuple(hi - lo for lo, hi in bbox)
        if labelmap is None or vtk_numpy.bbox_is_empty(vtk_numpy.bbox_from_extent(labelmap.GetExtent())):
            return np.zeros(shape, bool)
        labelValue = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
        offset = _integerOffset(self._volumeIndexFromStored(self._imageToSegmentation(labelmap)))
        if offset is not None:  # the same grid, or whole voxels apart (a cropped volume): read it as it is
            shifted = tuple((lo - d, hi - d) for (lo, hi), d in zip(bbox, offset))
            return vtk_numpy.read_region(labelmap, shifted, labelValue)
        reference = slicer.vtkOrientedImageData()
        reference.SetExtent(*vtk_numpy.extent_from_bbox(bbox))
        reference.SetImageToWorldMatrix(self.ijkToSegmentationMatrix())
        binary = slicer.vtkOrientedImageData()
        segmentationNode.GetBinaryLabelmapRepresentation(segmentID, binary)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            binary, reference, resampled, False, True)
        # A volume voxel holding any stored voxel of the segment counts as set (a finer grid's partial voxels),
        # as the write below assumes; nearest-neighbour resampling alone could miss a thin structure.
        volumeFromStored = self._volumeIndexFromStored(self._imageToSegmentation(labelmap))
        storedBox, pool, _update = self._storedBox(bbox, volumeFromStored)
        stored = vtk_numpy.read_region(labelmap, storedBox, labelValue)
        return (vtk_numpy.read_region(resampled, bbox) != 0) | pool(stored)

    # ------------------------------------------------------------------ writing
    def mergeUpdate(self, targetID: str, update: MaskUpdate, prompt: Prompt, policy: EditPolicy) -> EditStep:
        """What the engine's update does to every segment under ``policy``; reads only, writes nothing."""
        if update.is_empty_box:
            return EditStep(prompt)
        bbox = update.bbox_kji
        segmentation = self.segmentationNode.GetSegmentation()
        displayNode = self.segmentationNode.GetDisplayNode()
        current = self.readRegion(targetID, bbox)
        others: List[OtherSegment] = []
        for segmentID in segmentation.GetSegmentIDs():
            if segmentID != targetID:
                visible = bool(displayNode.GetSegmentVisibility(segmentID)) if displayNode else True
                others.append(OtherSegment(segmentID, self.readRegion(segmentID, bbox), visible))
        intensity = None
        if policy.intensity_range is not None:
            intensity = slicer.util.arrayFromVolume(self.volumeNode)[update.slices]
        result = merge_region(current, update.mask, others, policy, intensity)
        edits = [RegionEdit(targetID, bbox, current, result.target)]
        before = {o.segment_id: o.region for o in others}
        edits += [RegionEdit(sid, bbox, before[sid], new) for sid, new in result.others.items()]
        return EditStep(prompt, tuple(e for e in edits if not np.array_equal(e.before, e.after)))

    def writeNewSegment(self, segmentID: str, maskKji: np.ndarray, policy: EditPolicy) -> EditStep:
        """Write a whole-volume (k, j, i) mask into an empty (new) segment under ``policy``; returns the step.

        The interactive steps' own merge and write: the mask's bounding box becomes one :class:`MaskUpdate`
        for :meth:`mergeUpdate` (Protect / Allow overlap / Overwrite, masking) and :meth:`writeStep` (all or
        nothing). Only that box is written, so the segment's voxels elsewhere must be empty, as in a new segment.
        """
        maskKji = np.asarray(maskKji)
        if tuple(maskKji.shape) != self.shapeKji:
            raise ValueError(f"The mask has shape {tuple(maskKji.shape)} (k, j, i) but the volume {self.shapeKji}.")
        bbox = vtk_numpy.bbox_of_mask(maskKji)
        if vtk_numpy.bbox_is_empty(bbox):
            return EditStep(Prompt("prompts"))
        update = MaskUpdate.covering((maskKji != 0).astype(np.uint8), bbox)
        step = self.mergeUpdate(segmentID, update, Prompt("prompts"), policy)
        self.writeStep(step, after=True)
        return step

    def writeStep(self, step: EditStep, after: bool = True) -> None:
        """Write a step's regions (``after``) or restore them (``before``).

        The first write records what changed on each segment's stored grid (:class:`StoredPatch`, kept in
        ``step.edits``); later writes (undo, redo) write those stored bytes back exactly. If Slicer refuses one
        segment, the segments already written go back to their previous content and :class:`SegmentWriteError`
        is raised: the segmentation is never left half-written.
        """
        edits = list(step.edits)
        written: List[int] = []
        try:
            with slicer.util.RenderBlocker():
                for index, edit in enumerate(edits):
                    patch = self._writeEdit(edit, after)
                    if edit.stored is None and patch is not None:
                        edits[index] = replace(edit, stored=patch)
                    written.append(index)
        except Exception:
            for index in reversed(written):
                try:
                    self._writeEdit(edits[index], not after)
                except Exception:  # the original error matters more than a failed restore
                    pass
            raise
        finally:
            step.edits = tuple(edits)

    def _writeEdit(self, edit: RegionEdit, after: bool) -> Optional[StoredPatch]:
        """One edit, through its stored patch when the segment is still stored on that grid, else mapped from
        the volume-grid region; returns the patch of a first write."""
        stored = edit.stored
        if stored is not None and _matrixKey(self._storedGrid(edit.segment_id)) == stored.grid:
            self._writeStored(edit.segment_id, stored.bbox_kji, stored.after if after else stored.before)
            return None
        return self.writeRegion(edit.segment_id, edit.bbox_kji, edit.after if after else edit.before)

    # ------------------------------------------------------------------ the stored grid
    @staticmethod
    def _imageToSegmentation(image) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def _volumeIndexFromStored(self, storedToSegmentation: np.ndarray) -> np.ndarray:
        """Stored-grid index (i, j, k, 1) -> volume-grid index."""
        return self._segmentationToIjk @ storedToSegmentation

    def _storedGrid(self, segmentID: str) -> np.ndarray:
        """Index -> segmentation-local matrix of the grid the segment is stored on: its labelmap layer's, or for an
        empty segment the segmentation's reference geometry (where Slicer's editor would put it), else the
        volume's grid."""
        labelmap = self.segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        if labelmap is not None and not vtk_numpy.bbox_is_empty(vtk_numpy.bbox_from_extent(labelmap.GetExtent())):
            return self._imageToSegmentation(labelmap)
        name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        geometry = self.segmentationNode.GetSegmentation().GetConversionParameter(name)
        if geometry:
            matrix, extent = vtk.vtkMatrix4x4(), [0, -1, 0, -1, 0, -1]
            if slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, matrix, extent):
                return slicer.util.arrayFromVTKMatrix(matrix)
        return self._ijkToSegmentation.copy()

    def _readStored(self, segmentID: str, bbox: BBoxKJI) -> np.ndarray:
        """The segment's stored voxels in a box of its stored grid (bool)."""
        labelmap = self.segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        if labelmap is None or vtk_numpy.bbox_is_empty(vtk_numpy.bbox_from_extent(labelmap.GetExtent())):
            return np.zeros(tuple(hi - lo for lo, hi in bbox), bool)
        labelValue = self.segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
        return vtk_numpy.read_region(labelmap, bbox, labelValue)

    def _storedBox(self, bbox: BBoxKJI, volumeFromStored: np.ndarray):
        """The box of the stored grid whose voxel centres may fall in ``bbox`` of the volume's grid, and
        ``pool(before)``, the volume voxels of ``bbox`` holding any set stored voxel, and ``update(before, region)
        -> after`` for the stored voxels of that box.

        A stored voxel whose centre lies in a voxel of ``bbox`` takes that voxel's value in ``region`` when the
        write changes it; a volume voxel counts as set before the write when any stored voxel in it was. So on a
        finer grid (an oversampled segmentation) detail the write leaves alone stays: a positive result where the
        segment already had voxels keeps its fine shape there, a negative one clears them.
        """
        offset = _integerOffset(volumeFromStored)
        if offset is not None:  # the same grid, or whole voxels apart: voxel for voxel
            storedBox = tuple((lo - d, hi - d) for (lo, hi), d in zip(bbox, offset))
            return storedBox, lambda before: before.copy(), lambda before, region: region.copy()
        storedFromVolume = np.linalg.inv(volumeFromStored)
        corners = np.array([[i, j, k, 1.0] for k in (bbox[0][0] - 0.5, bbox[0][1] - 0.5)
                            for j in (bbox[1][0] - 0.5, bbox[1][1] - 0.5) for i in (bbox[2][0] - 0.5, bbox[2][1] - 0.5)])
        mapped = (storedFromVolume @ corners.T)[:3]  # (i, j, k) rows
        lo, hi = np.floor(mapped.min(axis=1)).astype(int), np.ceil(mapped.max(axis=1)).astype(int) + 1
        storedBox = tuple((int(lo[a]), int(hi[a])) for a in (2, 1, 0))
        low = np.array([b[0] for b in bbox[::-1]])  # (i, j, k)
        high = np.array([b[1] for b in bbox[::-1]])
        linear = volumeFromStored[:3, :3]
        if np.allclose(linear, np.diag(np.diag(linear)), atol=1e-9):
            # Axes parallel (e.g. an oversampled geometry): each axis maps on its own, memory follows the box.
            axes = []
            for axis in (2, 1, 0):  # k, j, i
                stored = np.arange(*storedBox[2 - axis])
                volume = np.rint(linear[axis, axis] * stored + volumeFromStored[axis, 3]).astype(int)
                keep = (volume >= low[axis]) & (volume < high[axis])
                axes.append((np.flatnonzero(keep), volume[keep] - low[axis]))

            shape = tuple(hi - lo for lo, hi in bbox)

            def poolAlongAxes(before):  # OR of the stored voxels in each volume voxel, one axis at a time
                (sk, vk), (sj, vj), (si, vi) = axes
                was = before[np.ix_(sk, sj, si)]
                for axis, volumeIndex in enumerate((vk, vj, vi)):
                    moved = np.moveaxis(was, axis, 0)
                    pooled = np.zeros((shape[axis],) + moved.shape[1:], bool)
                    np.logical_or.at(pooled, volumeIndex, moved)
                    was = np.moveaxis(pooled, 0, axis)
                return was

            def alongAxes(before, region):
                after = before.copy()
                (sk, vk), (sj, vj), (si, vi) = axes
                stored, volume = np.ix_(sk, sj, si), np.ix_(vk, vj, vi)
                was = poolAlongAxes(before)
                after[stored] = np.where(region[volume] != was[volume], region[volume], before[stored])
                return after

            return storedBox, poolAlongAxes, alongAxes
        k, j, i = np.indices(tuple(h - b for b, h in storedBox)).reshape(3, -1)
        index = np.stack([i + storedBox[2][0], j + storedBox[1][0], k + storedBox[0][0], np.ones_like(i)])
        volumeIndex = np.rint((volumeFromStored @ index)[:3]).astype(int) - low[:, None]  # (i, j, k)
        inside = np.all((volumeIndex >= 0) & (volumeIndex < (high - low)[:, None]), axis=0)

        vi, vj, vk = volumeIndex[:, inside]

        def poolAnyOrientation(before):
            was = np.zeros(tuple(hi - lo for lo, hi in bbox), bool)
            np.logical_or.at(was, (vk, vj, vi), before.reshape(-1)[inside])
            return was

        def anyOrientation(before, region):
            after = before.copy()
            flat = after.reshape(-1)
            was = poolAnyOrientation(before)
            flat[inside] = np.where(region[vk, vj, vi] != was[vk, vj, vi], region[vk, vj, vi], flat[inside])
            return after

        return storedBox, poolAnyOrientation, anyOrientation

    def _writeStored(self, segmentID: str, storedBox: BBoxKJI, values: np.ndarray) -> None:
        """Set the segment's stored voxels in a box of its stored grid; every other voxel stays as stored.

        Raises:
            SegmentWriteError: Slicer refused the labelmap (``SetBinaryLabelmapToSegment`` returned false).
        """
        segmentationNode = self.segmentationNode
        segment = segmentationNode.GetSegmentation().GetSegment(segmentID)
        if segment is None:
            raise SegmentWriteError(f"Segment '{segmentID}' was deleted; undo is not possible for it any more.")
        segmentation = segmentationNode.GetSegmentation()
        layer = segmentation.GetLayerIndex(segmentID)
        if layer >= 0 and len(segmentation.GetSegmentIDsForLayer(layer)) > 1:
            # A shared layer (a label map import) costs Slicer a pass over the whole layer at every write; on
            # its own layer (as Slicer moves a segment when segments overlap) the segment's writes cost what the
            # segment does. The other segments' voxels do not change.
            segmentation.SeparateSegmentLabelmap(segmentID)
        grid = self._storedGrid(segmentID)
        # MODE_REPLACE replaces the whole segment, also with an extent (seen on slicer-core 5.13), so the image
        # covers the segment's own voxels (not its whole shared layer: the cost follows the segment) and the box.
        cover = storedBox
        labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        if labelmap is not None and not vtk_numpy.bbox_is_empty(vtk_numpy.bbox_from_extent(labelmap.GetExtent())):
            layerBox = vtk_numpy.bbox_from_extent(labelmap.GetExtent())
            own = vtk_numpy.bbox_of_mask(vtk_numpy.array_from_image(labelmap) == segment.GetLabelValue())
            own = tuple((lo + b[0], hi + b[0]) for (lo, hi), b in zip(own, layerBox))
            if not vtk_numpy.bbox_is_empty(own):
                cover = union_bbox(own, storedBox)
        binary = self._readStored(segmentID, cover)
        binary[tuple(slice(lo - c[0], hi - c[0]) for (lo, hi), c in zip(storedBox, cover))] = values
        image = vtk_numpy.image_from_array(binary.astype(np.uint8), tuple(lo for lo, _hi in cover),
                                           slicer.vtkOrientedImageData())
        image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(grid))
        hadSurface = segmentationNode.GetSegmentation().ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        ok = logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentID, logic.MODE_REPLACE)
        if not ok:
            raise SegmentWriteError(
                f"Slicer refused to write segment '{segment.GetName()}' (see the application log); check that "
                "the segmentation's source representation is 'Binary labelmap'.")
        if hadSurface:
            segmentationNode.CreateClosedSurfaceRepresentation()
        logic.SetSegmentStatus(segment, logic.InProgress)

    def writeRegion(self, segmentID: str, bbox: BBoxKJI, region: np.ndarray) -> StoredPatch:
        """Set a segment's voxels in a box of the volume's grid; keeps its voxels elsewhere; returns what changed
        on the segment's stored grid.

        The box goes onto the grid the segment is stored on (:meth:`_storedGrid`): the stored voxels whose
        centres fall in the box take the value of the volume voxel they lie in where the write changes it
        (:meth:`_storedBox`), all others keep theirs. On the volume's own grid (or whole voxels apart from it)
        that is the box itself, voxel for voxel.

        Raises:
            SegmentWriteError: Slicer refused the labelmap (``SetBinaryLabelmapToSegment`` returned false).
        """
        if self.segmentationNode.GetSegmentation().GetSegment(segmentID) is None:
            raise SegmentWriteError(f"Segment '{segmentID}' was deleted; undo is not possible for it any more.")
        grid = self._storedGrid(segmentID)
        storedBox, _pool, update = self._storedBox(bbox, self._volumeIndexFromStored(grid))
        before = self._readStored(segmentID, storedBox)
        after = update(before, np.asarray(region, bool))
        self._writeStored(segmentID, storedBox, after)
        return StoredPatch(_matrixKey(grid), storedBox, before, after)


def boxFromROI(roiNode) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """World-RAS axis-aligned box around a (possibly rotated, transformed) markups ROI; None until it is defined.

    A box ROI is placed corner by corner and has a zero size component until its second corner is down
    (``vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints``), so "defined" means every size component > 0,
    with no corner only previewed: in a view the second corner is a preview point that follows the mouse until
    the click, and the ROI already has a size from it (vtkSlicerMarkupsWidget.cxx ``UpdatePreviewPoint``).
    """
    if roiNode.GetNumberOfDefinedControlPoints() < roiNode.GetNumberOfControlPoints():
        return None
    size = [float(v) for v in roiNode.GetSize()]
    if not all(np.isfinite(v) and v > 0 for v in size):
        return None
    center = [0.0, 0.0, 0.0]
    roiNode.GetCenter(center)
    return coordinates.roi_box_world(center, size, slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix()),
                                     nodeToWorldMatrix(roiNode))


def toggleSegmentVisibility(segmentationNode, segmentID: str) -> bool:
    """Show or hide a segment in its segmentation's display node (V); returns the new visibility (False when
    there is no display node or segment)."""
    displayNode = segmentationNode.GetDisplayNode() if segmentationNode else None
    if displayNode is None or not segmentID:
        return False
    visible = not displayNode.GetSegmentVisibility(segmentID)
    displayNode.SetSegmentVisibility(segmentID, visible)
    return visible


def firstScalarVolume(scene):
    """The first plain scalar volume of the scene: ``GetFirstNodeByClass`` would also return labelmap and
    vector volumes, which are subclasses of vtkMRMLScalarVolumeNode."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() == "vtkMRMLScalarVolumeNode":
            return node
    return None
