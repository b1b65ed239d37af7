"""The interactive engine: everything between a click in world RAS and a changed box of the mask.

Layer 2 of the package (``docs/ARCHITECTURE.md``): imports the foundation modules and :mod:`..model`, never
the tools or the applications. ``geometry`` (coordinate spaces), ``preprocessing`` (model grid, ROI,
paste-back), ``predictor`` (encode once per ROI, decode per click), ``session`` (clicks, box, undo/redo,
proposals), ``session_protocol`` (what local and remote sessions share), ``mask_update``, ``clicks`` (click
placement rules), ``prompts_io`` (prompt files), ``metrics`` and ``proposals`` (prompt-free first masks).
"""
