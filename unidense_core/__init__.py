"""UniDense core: the MERGE, DMP and JointNet methods as plain torch/diffusers code (never imports ComfyUI).

Importing this package is cheap: it loads torch only; diffusers is imported inside the functions that need it.
"""

__version__ = "0.1.0"
