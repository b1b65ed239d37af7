"""Runs the in-Slicer self-test (``Testing/Python/SAMVolSegmentSelfTest.py``) for ``SAMVolSegmentTest`` (Reload and
Test); moved out of ``SAMVolSegment.py``, which keeps the module classes."""

from __future__ import annotations

import importlib.util
import os
import unittest
from typing import Callable

from slicer.i18n import tr as _


def runSelfTest(moduleDir: str, delayDisplay: Callable[[str], None]) -> None:
    """Run the self-test suite; it skips itself where torch is missing. Raises AssertionError when it fails."""
    path = os.path.join(moduleDir, "Testing", "Python", "SAMVolSegmentSelfTest.py")
    if not os.path.isfile(path):
        delayDisplay(_("The self-test ships with the source tree only ({path}).").format(path=path))
        return
    spec = importlib.util.spec_from_file_location("SAMVolSegmentSelfTest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = unittest.TextTestRunner(verbosity=2).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(module.SAMVolSegmentSelfTest))
    if not result.wasSuccessful():
        raise AssertionError(_("SAMVolSegment self-test failed; see the Python console."))
