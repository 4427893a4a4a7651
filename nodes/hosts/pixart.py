"""MERGE on ComfyUI's own PixArt (``comfy.ldm.pixart.pixartms.PixArtMS``): the host adapter and the patch.

The patch replaces ``diffusion_model.forward_orig`` on a ModelPatcher clone only (an object patch that ComfyUI
restores when another clone is loaded). The image latent arrives as ``c_concat`` (stock ``noise_concat``
conditioning), which ComfyUI appends after the noisy latent: x = [z_t (4), z_img (4)].
"""

from __future__ import annotations

from ...unidense_core.merge.converters import MergeConverters
from ...unidense_core.merge.forward import GroupReusePlan, check_compatible, merge_depth_forward


def is_pixart(diffusion_model) -> bool:
    return all(hasattr(diffusion_model, a) for a in ("blocks", "t_block", "t_embedder", "y_embedder", "forward_orig"))


class ComfyPixArtHost:
    """:class:`unidense_core.merge.forward.PixArtHost` over ComfyUI's PixArtMS (original PixArt key names)."""

    def __init__(self, dm):
        self.dm = dm
        self.num_blocks = len(dm.blocks)
        self.hidden_size = dm.hidden_size
        self.patch_size = dm.patch_size

    def embed_timestep(self, timestep, batch, dtype):
        t = self.dm.t_embedder(timestep, dtype)  # [B,D]
        return self.dm.t_block(t), t  # [B,6D], [B,D]

    def embed_caption(self, context, mask, batch):
        if context.ndim == 3:
            context = context.unsqueeze(1)  # [B,1,T,C] as PixArtMS.forward makes it
        y = self.dm.y_embedder(context, False)  # [B,1,T,D]
        return y.squeeze(1).view(1, -1, self.hidden_size), None  # ComfyUI's unmasked packed form

    def run_block(self, index, h, caption, mask, t6, grid):
        p = self.dm.patch_size
        return self.dm.blocks[index](h, caption, t6, None, (grid[0] * p, grid[1] * p))


def check_pixart_alpha_512(model_patcher, converters: MergeConverters) -> GroupReusePlan:
    """Validate a MODEL for MERGE-B before anything is patched; errors say what to load instead."""
    dm = model_patcher.get_model_object("diffusion_model")
    if not is_pixart(dm):
        raise ValueError(
            f"ModeSwitch needs a PixArt MODEL, got {type(dm).__name__}. Load PixArt-XL-2-512x512 with the "
            "'Load Diffusion Model' (UNETLoader) node; MERGE-B converters only fit that base."
        )
    if getattr(dm, "micro_conditioning", False):
        raise ValueError(
            "This PixArt MODEL has resolution/aspect micro-conditions (a 1024 PixArt-α); MERGE-B converters were "
            "trained on PixArt-XL-2-512x512. Load that model instead."
        )
    if dm.in_channels != 4:
        raise ValueError(f"The PixArt MODEL takes {dm.in_channels} latent channels; PixArt-α takes 4.")
    return check_compatible(ComfyPixArtHost(dm), converters)


def depth_forward_orig(dm, converters: MergeConverters):
    """A ``forward_orig`` for PixArtMS that runs MERGE depth mode (ε in the first 4 of 8 output channels)."""
    host = ComfyPixArtHost(dm)
    latent_channels = dm.in_channels

    def forward_orig(x, timestep, y, mask=None, c_size=None, c_ar=None, **kwargs):
        if x.shape[1] != 2 * latent_channels:
            raise ValueError(
                "UniDense ModeSwitch is in depth mode but the model got no image latent. Connect the conditioning "
                "through 'UniDense MERGE Depth Conditioning' (it attaches the image) before the sampler."
            )
        z_t, z_img = x[:, :latent_channels], x[:, latent_channels:]  # [B,4,h,w] each
        return merge_depth_forward(host, converters, z_img, z_t, timestep, y)  # [B,8,h,w]

    return forward_orig


def depth_mode_clone(model_patcher, converters_patcher, latent_format):
    """Clone with converters as an additional model, depth forward and the α latent format; input untouched."""
    converters: MergeConverters = converters_patcher.model
    check_pixart_alpha_512(model_patcher, converters)
    dm = model_patcher.get_model_object("diffusion_model")
    m = model_patcher.clone()
    m.set_additional_models("unidense_merge_converters", [converters_patcher])
    m.add_object_patch("diffusion_model.forward_orig", depth_forward_orig(dm, converters))
    if latent_format is not None:
        m.add_object_patch("latent_format", latent_format)
    return m
