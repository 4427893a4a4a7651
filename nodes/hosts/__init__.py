"""The ComfyUI hosts: each method's core algorithm run on ComfyUI's own networks, samplers and model management."""
