"""The method itself, in plain torch/numpy: nothing here imports nerfstudio.

One module per concept: `rasterize` (CPU Gaussian rasteriser), `losses` (Click-Gaussian
feature losses), `masks` (two-level instance maps from disk), `demo_scene` (the procedural
scene the demo and tests train on).
"""
