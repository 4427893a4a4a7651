"""JointNet (Zhang et al., ICLR 2024): the two-branch RGB-D UNet, channel-wise inpainting, the pipeline."""
