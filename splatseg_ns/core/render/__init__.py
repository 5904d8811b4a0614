"""Rendering Gaussians without gsplat's kernels: the exact pure-torch rasteriser (gsplat's semantics), the
Gaussians blended at one pixel (what a click reads), and the viewer's displays (feature PCA, segment colours,
tints), which replace Gaussian tensors and never edit them."""
