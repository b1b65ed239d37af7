"""ctest entry for the in-Slicer workflow test (needs Slicer; run with `ctest -R py_SAMVolSegmentWorkflowTest`)."""

import unittest

import slicer


class SAMVolSegmentWorkflowTest(unittest.TestCase):
    """Runs SAMVolSegmentTest: click, segment, undo/redo, next segment on an oblique transformed volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_workflow(self):
        from SAMVolSegment import SAMVolSegmentTest

        test = SAMVolSegmentTest()
        test.runTest()
