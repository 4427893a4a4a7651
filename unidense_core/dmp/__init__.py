"""DMP (Lee et al., CVPR 2024): the deterministic interpolation sampler and the official LoRA format."""
