"""Read and write segment voxels on the input volume's grid, the way a Segment Editor effect would.

MRML glue (imports ``slicer``), so it follows Slicer's camelCase; the array work it relies on (``vtk_numpy``,
``segment_merge``) is plain numpy and tested on its own. One :class:`SegmentIO` serves one target: a
segmentation node and the volume whose grid the engine works on.

Why every write goes through ``SetBinaryLabelmapToSegment`` with ``MODE_REPLACE`` on the segment's own extent:
that call separates the segment from a shared layer when needed (so the other segments of the layer are not
resampled or touched), re-converts the closed surface, and fires the events views need.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import slicer
import vtk

from SAMVolSegmentLib.engine.mask_update import BBoxKJI, MaskUpdate, union_bbox

from . import coordinates, vtk_numpy
from .segment_merge import EditPolicy, MaskMode, OtherSegment, OtherSegments, OverwriteMode, merge_region
from .undo_stack import EditStep, Prompt, RegionEdit


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


class SegmentIO:
    """Segment voxels of one segmentation, as bool arrays of boxes of one volume's (k, j, i) grid."""

    def __init__(self, volumeNode, segmentationNode) -> None:
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.ijkToWorld = volumeIjkToWorld(volumeNode)
        self.shapeKji: Tuple[int, int, int] = tuple(int(n) for n in slicer.util.arrayFromVolume(volumeNode).shape)

    # ------------------------------------------------------------------ geometry
    def ijkToSegmentationMatrix(self) -> vtk.vtkMatrix4x4:
        """Volume IJK → the segmentation's local frame: the ImageToWorld matrix of the labelmaps written."""
        local = np.linalg.inv(nodeToWorldMatrix(self.segmentationNode)) @ self.ijkToWorld
        return slicer.util.vtkMatrixFromArray(local)

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

    def _labelmapMatchesGrid(self, labelmap) -> bool:
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        return coordinates.same_grid(slicer.util.arrayFromVTKMatrix(matrix),
                                     slicer.util.arrayFromVTKMatrix(self.ijkToSegmentationMatrix()))

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
        if self._labelmapMatchesGrid(labelmap):
            return vtk_numpy.read_region(labelmap, bbox, labelValue)
        reference = slicer.vtkOrientedImageData()
        reference.SetExtent(*vtk_numpy.extent_from_bbox(bbox))
        reference.SetImageToWorldMatrix(self.ijkToSegmentationMatrix())
        binary = slicer.vtkOrientedImageData()
        segmentationNode.GetBinaryLabelmapRepresentation(segmentID, binary)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            binary, reference, resampled, False, True)
        return vtk_numpy.read_region(resampled, bbox) != 0

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

        If Slicer refuses one segment, the segments already written go back to their previous content and
        :class:`SegmentWriteError` is raised: the segmentation is never left half-written.
        """
        written: List[RegionEdit] = []
        try:
            with slicer.util.RenderBlocker():
                for edit in step.edits:
                    self.writeRegion(edit.segment_id, edit.bbox_kji, edit.after if after else edit.before)
                    written.append(edit)
        except Exception:
            for edit in reversed(written):
                try:
                    self.writeRegion(edit.segment_id, edit.bbox_kji, edit.before if after else edit.after)
                except Exception:  # the original error matters more than a failed restore
                    pass
            raise

    def writeRegion(self, segmentID: str, bbox: BBoxKJI, region: np.ndarray) -> None:
        """Set a segment's voxels in a box of the volume's grid; keeps its voxels elsewhere.

        The segment goes to ``SetBinaryLabelmapToSegment`` as one binary image covering its own extent plus
        the box, so the cost scales with the segment, not the volume.

        Raises:
            SegmentWriteError: Slicer refused the labelmap (``SetBinaryLabelmapToSegment`` returned false).
        """
        segmentationNode = self.segmentationNode
        labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        segment = segmentationNode.GetSegmentation().GetSegment(segmentID)
        if segment is None:
            raise SegmentWriteError(f"Segment '{segmentID}' was deleted; undo is not possible for it any more.")
        existing: BBoxKJI = ((0, 0), (0, 0), (0, 0))
        if labelmap is not None:
            existing = vtk_numpy.bbox_from_extent(labelmap.GetExtent())
        if not vtk_numpy.bbox_is_empty(existing) and self._labelmapMatchesGrid(labelmap):
            cover = union_bbox(existing, bbox)
            binary = vtk_numpy.read_region(labelmap, cover, segment.GetLabelValue())
        elif vtk_numpy.bbox_is_empty(existing):
            cover, binary = bbox, np.zeros(tuple(hi - lo for lo, hi in bbox), bool)
        else:  # stored on another grid: bring the whole segment onto the volume's grid once
            cover = tuple((0, n) for n in self.shapeKji)
            binary = self.readRegion(segmentID, cover)
        inner = tuple(slice(lo - c[0], hi - c[0]) for (lo, hi), c in zip(bbox, cover))
        binary[inner] = region
        image = vtk_numpy.image_from_array(binary.astype(np.uint8), tuple(lo for lo, _hi in cover),
                                           slicer.vtkOrientedImageData())
        image.SetImageToWorldMatrix(self.ijkToSegmentationMatrix())
        hadSurface = segmentationNode.GetSegmentation().ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
        ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentationNode, segmentID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        if not ok:
            raise SegmentWriteError(
                f"Slicer refused to write segment '{segment.GetName()}' (see the application log); check that "
                "the segmentation's source representation is 'Binary labelmap'.")
        if hadSurface:
            segmentationNode.CreateClosedSurfaceRepresentation()
        slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
            segment, slicer.vtkSlicerSegmentationsModuleLogic.InProgress)


def boxFromROI(roiNode) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """World-RAS axis-aligned box around a (possibly rotated, transformed) markups ROI; None until it is defined.

    A box ROI is placed corner by corner and has a zero size component until its second corner is down
    (``vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints``), so "defined" means every size component > 0.
    """
    size = [float(v) for v in roiNode.GetSize()]
    if not all(np.isfinite(v) and v > 0 for v in size):
        return None
    center = [0.0, 0.0, 0.0]
    roiNode.GetCenter(center)
    return coordinates.roi_box_world(center, size, slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix()),
                                     nodeToWorldMatrix(roiNode))


def firstScalarVolume(scene):
    """The first plain scalar volume of the scene: ``GetFirstNodeByClass`` would also return labelmap and
    vector volumes, which are subclasses of vtkMRMLScalarVolumeNode."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() == "vtkMRMLScalarVolumeNode":
            return node
    return None
