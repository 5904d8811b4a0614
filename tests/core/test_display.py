"""The viewer's displays: the fixed feature PCA."""

from __future__ import annotations

import torch

from splatseg_ns.core.render.display import fit_feature_pca, pca_colours


def test_feature_pca_projection_is_fixed():
    features = torch.randn(500, 24)
    pca = fit_feature_pca(features)
    again = fit_feature_pca(features.clone())
    for a, b in zip(pca, again):
        assert torch.allclose(a, b)
    colours = pca_colours(features, pca)
    assert colours.shape == (500, 3) and colours.min() >= 0 and colours.max() <= 1
    assert torch.equal(pca_colours(features[:7], pca), colours[:7])  # a Gaussian's colour does not depend on the others
