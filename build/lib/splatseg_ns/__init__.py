"""splatseg: click-to-segment 3D Gaussian Splatting as a nerfstudio method.

This package stays import-light: nerfstudio loads it through an entry point for every
`ns-*` command, so heavy modules (SAM, CLIP, hdbscan) are imported inside functions.
"""

__version__ = "0.1.0"
