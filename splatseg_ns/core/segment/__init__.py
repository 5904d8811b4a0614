"""The segmentation method: the feature losses (Click-Gaussian), GFL's global candidates, the feature stage's
schedule, the votes that lift 2D masks to every Gaussian (FlashSplat), the per-level state a run keeps,
selections from clicks, names and masks, segmenting everything, and the metrics that score it."""
