"""In-Slicer self-test: click → segment → undo → redo → box → edit an existing segment → lasso and scribble →
console (segmentVolume, the batch path, against ``SAMVolSegmentLib.segment``) → propose (a model with a proposal
head) → refine → undo.

Runs in a real Slicer (ctest ``py_SAMVolSegmentSelfTest``, or *Reload and Test*). Skips itself where torch is
missing, as SlicerTotalSegmentator's test does, so a CI Slicer without the PyTorch extension stays green.
Each test runs once: ctest registers this file only.
"""

from __future__ import annotations

import unittest

import numpy as np
import slicer
import vtk


def _torchMissing() -> bool:
    from SAMVolSegmentSlicerLib import dependencies

    return any(req.provider == "pytorch" for req in dependencies.missing_requirements())


class SAMVolSegmentSelfTest(unittest.TestCase):
    """The bundled model on an oblique, parent-transformed phantom with a bright ball."""

    def setUp(self) -> None:
        if _torchMissing():
            self.skipTest("PyTorch is not installed: install the PyTorch extension to run this test.")
        slicer.mrmlScene.Clear()
        from SAMVolSegment import SAMVolSegmentLogic

        self.logic = SAMVolSegmentLogic()
        self.logic.processEvents = slicer.app.processEvents
        self.logic.loadModel("default", "cpu")

    def tearDown(self) -> None:
        logic = getattr(self, "logic", None)
        if logic is not None:
            logic.cleanup()

    @staticmethod
    def _phantom():
        """Oblique 1.0×1.2×2.0 mm volume with a bright ball under a rotating + translating parent transform.

        Returns (volumeNode, ball centre in world RAS, ball centre (k, j, i)).
        """
        from SAMVolSegment import SAMVolSegmentLogic

        shape_kji = (48, 96, 96)
        spacing_ijk = np.array([1.0, 1.2, 2.0])
        k, j, i = np.mgrid[: shape_kji[0], : shape_kji[1], : shape_kji[2]]
        centre_ijk = np.array([50.0, 44.0, 22.0])
        dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((i, j, k), centre_ijk, spacing_ijk)))
        rng = np.random.default_rng(0)
        voxels = np.where(dist < 18.0, 300.0, 20.0) + rng.normal(0, 5, shape_kji)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
        slicer.util.updateVolumeFromArray(volumeNode, voxels.astype(np.int16))
        volumeNode.SetSpacing(*spacing_ijk)
        volumeNode.SetOrigin(-40.0, 25.0, -30.0)
        angle = np.deg2rad(25.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        rotation = rotation @ np.array([[1, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)],
                                        [0, np.sin(angle / 2), np.cos(angle / 2)]])
        directions = vtk.vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                directions.SetElement(r, c, rotation[r, c])
        volumeNode.SetIJKToRASDirectionMatrix(directions)
        volumeNode.CreateDefaultDisplayNodes()
        transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
        transform = vtk.vtkTransform()
        transform.Translate(12.0, -7.0, 30.0)
        transform.RotateX(-15.0)
        transformNode.SetMatrixTransformToParent(transform.GetMatrix())
        volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
        ijkToWorld = SAMVolSegmentLogic.volumeIjkToWorld(volumeNode)
        centreWorld = (ijkToWorld @ np.append(centre_ijk, 1.0))[:3]
        return volumeNode, centreWorld, (22, 44, 50)

    @staticmethod
    def _toWorld(node) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        if node.GetParentTransformNode() is not None:
            node.GetParentTransformNode().GetMatrixTransformToWorld(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def _ijkToWorld(self, volumeNode) -> np.ndarray:
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        return self._toWorld(volumeNode) @ slicer.util.arrayFromVTKMatrix(ijkToRas)

    def _label(self, segmentationNode, segmentID, volumeNode) -> np.ndarray:
        """The segment at the volume's voxel centres, transform-safe: each centre goes to world (IJK -> RAS and
        parent transforms) and into the segment's stored labelmap (nearest voxel). ``slicer.util``'s
        ``arrayFromSegmentBinaryLabelmap`` / ``updateSegmentBinaryLabelmapFromArray`` put a segment of a volume
        under a parent transform at the doubly transformed place (seen on slicer-core 5.13)."""
        shape = slicer.util.arrayFromVolume(volumeNode).shape
        layer = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentID)
        extent = layer.GetExtent() if layer is not None else (0, -1, 0, -1, 0, -1)
        if extent[1] < extent[0]:
            return np.zeros(shape, bool)
        imageToSegmentation = vtk.vtkMatrix4x4()
        layer.GetImageToWorldMatrix(imageToSegmentation)
        stored = slicer.util.arrayFromVTKMatrix(imageToSegmentation)
        stored[:3, 3] += stored[:3, :3] @ np.array(extent[0::2], float)  # index 0 of the array
        dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
        label = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
        from vtk.util import numpy_support

        values = numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars()).reshape(dims[::-1]) == label
        k, j, i = np.indices(shape).reshape(3, -1)
        toStored = np.linalg.inv(self._toWorld(segmentationNode) @ stored) @ self._ijkToWorld(volumeNode)
        index = np.rint((toStored @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3]).astype(int)
        inside = np.all((index >= 0) & (index < np.array(dims)[:, None]), axis=0)
        out = np.zeros(shape, bool).reshape(-1)
        out[inside] = values[index[2, inside], index[1, inside], index[0, inside]]
        return out.reshape(shape)

    def _setLabel(self, maskKji, segmentationNode, segmentID, volumeNode) -> None:
        """Put a mask on the volume's grid into a segment, transform-safe: the labelmap's image-to-world is the
        volume's IJK -> segmentation matrix, parent transforms of both included (SetBinaryLabelmapToSegment)."""
        from SAMVolSegmentSlicerLib import vtk_numpy

        image = vtk_numpy.image_from_array(np.asarray(maskKji, np.uint8), (0, 0, 0), slicer.vtkOrientedImageData())
        local = np.linalg.inv(self._toWorld(segmentationNode)) @ self._ijkToWorld(volumeNode)
        image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(local))
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        self.assertTrue(logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentID, logic.MODE_REPLACE))

    def test_click_undo_redo_box_and_protect(self) -> None:
        volumeNode, centreWorld, centreKji = self._phantom()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        logic = self.logic
        segmentID = logic.setTarget(volumeNode, segmentationNode, "")

        # The ball centre in world, computed by Slicer itself, matches the logic's matrix.
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        localRas = ijkToRas.MultiplyPoint((50.0, 44.0, 22.0, 1.0))[:3]
        slicerWorld = volumeNode.GetParentTransformNode().GetTransformToParent().TransformPoint(localRas)
        self.assertTrue(np.allclose(slicerWorld, centreWorld, atol=1e-4))

        logic.addPoint(centreWorld, positive=True)
        inside = self._label(segmentationNode, segmentID, volumeNode)
        self.assertTrue(inside[centreKji], "the clicked voxel must be inside the segment")
        voxels = slicer.util.arrayFromVolume(volumeNode)
        self.assertGreater(inside.sum(), 100)
        self.assertGreater(float(np.mean(voxels[inside] > 160)), 0.8)
        self.assertTrue(logic.canUndo)
        self.assertTrue({"total_s", "write_s"} <= set(logic.lastTiming))

        logic.undo()
        self.assertEqual(int(self._label(segmentationNode, segmentID, volumeNode).sum()), 0)
        logic.redo()
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), inside))

        # A box around the lower half limits the segment to it.
        lo, hi = centreWorld - 30.0, centreWorld + 30.0
        hi[2] = centreWorld[2]
        logic.setBox(lo, hi)
        boxed = self._label(segmentationNode, segmentID, volumeNode)
        self.assertLess(boxed.sum(), inside.sum())

        # Next segment under Protect: the first one never changes, the second does not take its voxels.
        logic.acceptSegment()
        secondID = logic.setTarget(volumeNode, segmentationNode, "")
        self.assertNotEqual(secondID, segmentID)
        logic.addPoint(centreWorld, positive=True)
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), boxed))
        second = self._label(segmentationNode, secondID, volumeNode)
        self.assertFalse(np.any(second & boxed))

    def test_lasso_and_scribble_undo_and_a_lasso_off_one_plane(self) -> None:
        """A positive lasso on one slice of the ball, drawn in the module's closed curve and sent as the panel does
        (addStrokeFromCurve), fills its polygon and leaves a locked marker; a negative scribble (console) clears the
        voxels it passes; undo restores each; a lasso off one plane is refused and changes nothing."""
        from SAMVolSegment import SAMVolSegmentLogic
        from SAMVolSegmentLib.errors import InvalidPromptError

        volumeNode, centreWorld, centreKji = self._phantom()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "strokes")
        logic = self.logic
        segmentID = logic.setTarget(volumeNode, segmentationNode, "")
        pn = logic.getParameterNode()
        pn.inputVolume, pn.segmentationNode, pn.segmentID = volumeNode, segmentationNode, segmentID
        pn.useSegmentEditorMasking = False
        ijkToWorld = SAMVolSegmentLogic.volumeIjkToWorld(volumeNode)

        def world(i, j, k):
            return (ijkToWorld @ np.array([i, j, k, 1.0]))[:3]

        logic.markers.ensureNodes()
        lassoCurve = pn.lassoCurve
        for i, j in ((42, 37), (58, 37), (58, 51), (42, 51)):  # around the ball's centre on its slice k = 22
            lassoCurve.AddControlPointWorld(vtk.vtkVector3d(*world(i, j, 22)))
        logic.addStrokeFromCurve(lassoCurve)
        lasso = self._label(segmentationNode, segmentID, volumeNode)
        self.assertTrue(lasso[22, 40:49, 45:56].all(), "the lasso's polygon on its slice is in the segment")
        self.assertTrue(lasso[centreKji])
        self.assertEqual(lassoCurve.GetNumberOfControlPoints(), 0)
        markers = [node for node in slicer.util.getNodesByClass("vtkMRMLMarkupsClosedCurveNode")
                   if node.GetAttribute("SAMVolSegment.strokeMarker") == "lasso"]
        self.assertEqual(len(markers), 1)
        self.assertTrue(markers[0].GetLocked())

        logic.addScribble([world(30, 44, 22), world(70, 44, 22)], positive=False)
        scribbled = self._label(segmentationNode, segmentID, volumeNode)
        self.assertFalse(scribbled[22, 44, 32:68].any(), "every voxel the negative scribble passes is cleared")

        with self.assertRaises(InvalidPromptError):
            logic.addLasso([world(42, 37, 18), world(58, 37, 26), world(58, 51, 18), world(42, 51, 26)])
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), scribbled))

        logic.undo()
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), lasso))
        logic.undo()
        self.assertEqual(int(self._label(segmentationNode, segmentID, volumeNode).sum()), 0)
        self.assertFalse(slicer.mrmlScene.IsNodePresent(markers[0]), "undo removes the lasso's marker")

    def test_edit_existing_segment_negative_click_removes_voxels(self) -> None:
        volumeNode, centreWorld, centreKji = self._phantom()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        existing = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        k, j, i = centreKji
        existing[k - 4:k + 4, j - 10:j + 10, i - 10:i + 10] = 1
        segmentID = segmentationNode.GetSegmentation().AddEmptySegment("", "existing")
        self._setLabel(existing, segmentationNode, segmentID, volumeNode)
        self.logic.setTarget(volumeNode, segmentationNode, segmentID)
        self.logic.addPoint(centreWorld, positive=False)
        after = self._label(segmentationNode, segmentID, volumeNode)
        self.assertFalse(after[centreKji], "a negative click on an existing segment removes its voxels there")
        self.logic.undo()
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), existing > 0))

    def test_console_segment_volume(self) -> None:
        """segmentVolume is the batch path: the mask ``SAMVolSegmentLib.segment`` gives for the same voxels, world
        geometry (parent transform included) and prompts, in a new segment; other segments and the interactive
        target are untouched; bad prompts raise and change nothing."""
        from SAMVolSegment import SAMVolSegmentLogic
        from SAMVolSegmentLib import segment
        from SAMVolSegmentLib.errors import InvalidPromptError

        volumeNode, centreWorld, centreKji = self._phantom()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "console")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        slab = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        k, j, i = centreKji
        slab[k - 3:k + 3, j - 30:j + 30, i - 30:i + 30] = 1  # through the ball
        otherID = segmentationNode.GetSegmentation().AddEmptySegment("", "slab")
        self._setLabel(slab, segmentationNode, otherID, volumeNode)
        slabBefore = self._label(segmentationNode, otherID, volumeNode)
        self.assertTrue(slabBefore[centreKji])

        for points, labels in (([], []), ([centreWorld], [0]), ([centreWorld], [1, 0]), ([centreWorld], [2])):
            with self.assertRaises(InvalidPromptError):
                self.logic.segmentVolume(volumeNode, segmentationNode, points, labels)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)

        points, labels = [centreWorld, centreWorld + np.array([0.0, 0.0, 12.0])], [1, 0]
        expected = segment(np.array(slicer.util.arrayFromVolume(volumeNode)), points, [True, False], model="default",
                           device="cpu", ijk_to_ras=SAMVolSegmentLogic.volumeIjkToWorld(volumeNode)) > 0
        self.assertTrue(expected[centreKji] and (expected & slabBefore).any() and (expected & ~slabBefore).any())

        protectedID = self.logic.segmentVolume(volumeNode, segmentationNode, points, labels, model="default",
                                               device="cpu", otherSegments="protect")
        self.assertTrue(np.array_equal(self._label(segmentationNode, protectedID, volumeNode), expected & ~slabBefore),
                        "protect: the new segment leaves out the slab's voxels")
        segmentID = self.logic.segmentVolume(volumeNode, segmentationNode, points, labels, segmentName="ball",
                                             model="default", device="cpu")
        self.assertEqual(segmentationNode.GetSegmentation().GetSegment(segmentID).GetName(), "ball")
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), expected),
                        "segmentVolume must give SAMVolSegmentLib.segment's mask (overlap allowed by default)")
        self.assertTrue(np.array_equal(self._label(segmentationNode, otherID, volumeNode), slabBefore))
        self.assertEqual(len(self.logic.session.clicks), 0, "the interactive session is not used")

    def test_propose_refine_undo_redo(self) -> None:
        """Propose with a model that has a proposal head. Teaching one takes minutes, so the bundled model gets a
        constant head, as the engine's tests build one (Testing/test_proposals.py): it proposes the whole model
        region, which holds this phantom. What is checked is the module's part: the class list, the step
        written under Protect, its marker, a click refining it, undo/redo, and a refused class changing nothing."""
        import torch
        from SAMVolSegmentSlicerLib import local_session

        from SAMVolSegment import SAMVolSegmentLogic
        from SAMVolSegmentLib.errors import InvalidPromptError
        from SAMVolSegmentLib.model.proposal_head import ProposalConfig, attach_proposal_head

        def modelWithConstantHead(source, device, download, progress):
            model = local_session.localModel(source, device, download, progress)
            head = attach_proposal_head(model, ProposalConfig(classes=("everything",)))
            with torch.no_grad():
                for parameter in head.parameters():
                    parameter.zero_()
                head.coarse_logits.bias.fill_(5.0)
            head.eval()
            return model

        self.logic.cleanup()  # a Logic whose kept model has the head
        logic = self.logic = SAMVolSegmentLogic()
        logic.processEvents = slicer.app.processEvents
        logic.modelFactory = modelWithConstantHead
        logic.modelSource, logic.device = "default", "cpu"
        logic.loadModel()
        self.assertEqual(logic.proposalClasses(), ("everything",))

        volumeNode, centreWorld, centreKji = self._phantom()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "proposals")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        slab = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        slab[centreKji[0] - 3:centreKji[0] + 3] = 1
        otherID = segmentationNode.GetSegmentation().AddEmptySegment("", "slab")
        self._setLabel(slab, segmentationNode, otherID, volumeNode)
        slabBefore = self._label(segmentationNode, otherID, volumeNode)
        pn = logic.getParameterNode()
        pn.inputVolume, pn.segmentationNode, pn.segmentID = volumeNode, segmentationNode, ""
        pn.useSegmentEditorMasking = False  # the Segment Editor's last masking must not shape this test

        with self.assertRaises(InvalidPromptError):
            logic.propose("liver")
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1, "a refused class adds nothing")

        logic.propose("everything")
        segmentID = pn.segmentID
        proposal = self._label(segmentationNode, segmentID, volumeNode)
        self.assertTrue(np.array_equal(proposal, ~slabBefore), "the whole volume except the protected slab")
        self.assertTrue(np.array_equal(self._label(segmentationNode, otherID, volumeNode), slabBefore))
        self.assertEqual(len(logic.session.clicks), 1)
        self.assertEqual(pn.positivePoints.GetNumberOfControlPoints(), 1)
        self.assertEqual(pn.positivePoints.GetNthControlPointLabel(0), "everything")

        cornerKji = (6, 10, 8)
        cornerWorld = (SAMVolSegmentLogic.volumeIjkToWorld(volumeNode) @ np.array([8.0, 10.0, 6.0, 1.0]))[:3]
        logic.addPoint(cornerWorld, positive=False)
        refined = self._label(segmentationNode, segmentID, volumeNode)
        self.assertFalse(refined[cornerKji], "a negative click removes the proposal there")
        self.assertTrue(refined[40:, 80:, 80:].all(), "and keeps it far from the click")

        logic.undo()
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), proposal))
        logic.undo()
        self.assertEqual(int(self._label(segmentationNode, segmentID, volumeNode).sum()), 0)
        self.assertEqual(pn.positivePoints.GetNumberOfControlPoints(), 0)
        logic.redo()
        self.assertTrue(np.array_equal(self._label(segmentationNode, segmentID, volumeNode), proposal))
        self.assertEqual(pn.positivePoints.GetNumberOfControlPoints(), 1)
        self.assertTrue(np.array_equal(self._label(segmentationNode, otherID, volumeNode), slabBefore))


def runTest() -> None:
    """Entry point for Slicer's ``--python-code`` style runners."""
    unittest.main(module=__name__, exit=False)
