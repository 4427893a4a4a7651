"""Make the example video the video-depth workflow loads, from code (nothing downloaded).

    python tools/example_video.py           # writes workflows/input/moving_sphere.mp4

The frames are tests/synthetic_video.py's scene: a shaded sphere moving across a textured, tilted plane (24 frames,
256×256, 12 fps), encoded with PyAV (ComfyUI's own video dependency) as H.264 when the build has it, else MPEG-4.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
PATH = os.path.join(ROOT, "workflows", "input", "moving_sphere.mp4")


def main() -> None:
    import av
    from synthetic_video import moving_sphere

    images = moving_sphere(24, 256, 256, radius=40)[0]  # [T,3,H,W] in [0, 1]
    frames = (images.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(PATH, "w") as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    print(f"{os.path.relpath(PATH, ROOT)}: {len(frames)} frames, {codec}, {os.path.getsize(PATH) / 1024:.1f} KB")


if __name__ == "__main__":
    main()
