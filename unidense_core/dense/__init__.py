"""Dense predictions as values: read-outs of decoded latents, display images, 16-bit files, 3D geometry."""
