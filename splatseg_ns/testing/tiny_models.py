"""The real SAM and CLIP architectures at toy size with random weights, for tests and benchmarks.

No weights can be downloaded where the tests run, so the extractors are exercised end to end on
models that have every module the real ones have (`sam_model_registry`'s, open_clip's CLIP) but
a few thousand parameters: an automatic mask generation or a batch of crop embeddings takes well
under a second on one CPU core. Their outputs are meaningless; their shapes and plumbing are real.
(DINO needs no toy: `core.extract.dino_features.load_dino(config, pretrained=False)` is small enough.)
"""

from __future__ import annotations

from functools import partial

# A toy open_clip configuration with the real CLIP architecture, for tests and benchmarks.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def build_tiny_sam(img_size: int = 64, embed_dim: int = 32, depth: int = 1, seed: int = 0):
    """A randomly initialised SAM with the real architecture at toy size, for tests and benchmarks.

    Same modules as `sam_model_registry` builds (ViT image encoder with relative positions,
    prompt encoder, two-way-transformer mask decoder), but a `img_size` px input, `embed_dim`
    channels and `depth` encoder blocks: a whole automatic mask generation at 8 points per side
    takes well under a second on one CPU core. Its masks are meaningless.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    patch = 8
    prompt_dim = 32
    model = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=img_size,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(depth - 1,),
            window_size=4,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return model.eval()


def build_tiny_clip(seed: int = 0):
    """(model, tokenizer): a randomly initialised CLIP with `TINY_CLIP_CONFIG`, for tests and benchmarks."""
    import torch
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CONFIG)
    return model.eval(), SimpleTokenizer(context_length=TINY_CLIP_CONFIG["text_cfg"]["context_length"])
