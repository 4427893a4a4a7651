"""Samplers shared by the methods: the official diffusers DDIM in k-diffusion σ-space (``ddim``)."""
