"""File formats: reading images and masks' pixels, 3DGS PLY files, checkpoints' weights, selection files.
Nothing of the method; every room above reads and writes through these."""
