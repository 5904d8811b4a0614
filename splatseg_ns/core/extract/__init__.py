"""Per-image inputs: two-level masks (a folder, or SAM's automatic generator), DINO feature maps and CLIP
embeddings of masks; the cache that holds them (atomic entries, a manifest of inputs and settings), and
filling it, serially, by shard, or on a Ray cluster."""
