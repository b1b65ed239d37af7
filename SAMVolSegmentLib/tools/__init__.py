"""Research tools on top of the engine: evaluation (click and CVPR25 protocols), the region-growing baseline,
training and its data, ``teach`` (adapters + proposal head for one structure), the demo phantom, synthetic
images and public sample cases.

Layer 3 of the package (``docs/ARCHITECTURE.md``): imports the engine, the model and the foundation modules,
never the applications (CLI, batch, remote).
"""
