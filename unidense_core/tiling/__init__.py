"""Tiled denoising over any denoiser callable: JointNet panoramas, MultiDiffusion, depth refinement."""
