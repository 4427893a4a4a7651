"""Make the example input images the workflows load, and the pack's icon, from code (no photos, nothing downloaded).

    python tools/example_images.py          # writes workflows/input/*.png and icon.png

The scene is a synthetic room ray-cast with numpy: a box-shaped room (back wall with a framed "mountain"
picture, side walls, floor, ceiling) and a table, seen by a pinhole camera with a 60° horizontal field of view.
Colours are flat per surface with a distance fall-off, so the files stay a few KB; the depth maps are the exact
distances of the same rays, written as disparity with near = white (the convention of JointNet, MiDaS and depth
ControlNets). In the editing pair the region to regenerate is transparent: LoadImage turns alpha into its MASK
output (mask = 1 - alpha), so that region has mask 1 = regenerate.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_DIR = os.path.join(ROOT, "workflows", "input")

# name -> (colour RGB 0..255); the room is x in [-2, 2], y in [-1.2, 1.4] (floor, ceiling), z in [-6, 1] (back wall
# at z = -6); the camera sits at the origin looking down -z.
COLOURS = {
    "back": (196, 178, 150),
    "left": (150, 170, 190),
    "right": (170, 150, 140),
    "floor": (120, 86, 60),
    "ceiling": (232, 232, 226),
    "frame": (70, 50, 35),
    "sky": (150, 190, 230),
    "mountain": (90, 110, 120),
    "snow": (240, 240, 245),
    "table": (150, 100, 55),
}
ROOM = dict(x=(-2.0, 2.0), y=(-1.2, 1.4), z=(-6.0, 1.0))
TABLE = ((-0.6, 0.9), (-1.2, -0.45), (-3.6, -2.4))  # x, y, z extents of a box standing on the floor
PICTURE = dict(x=(-0.9, 0.9), y=(0.05, 1.0))  # on the back wall


def _rays(width: int, height: int, fov_deg: float = 60.0) -> np.ndarray:
    """Unit-less ray directions [H, W, 3] of a pinhole camera looking down -z (y up)."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    xs = (np.arange(width) + 0.5 - width / 2) / f
    ys = -(np.arange(height) + 0.5 - height / 2) / f
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy, -np.ones_like(gx)], axis=-1)


def _box_hit(d: np.ndarray, box) -> np.ndarray:
    """Ray parameter t of the first hit of rays from the origin with an axis-aligned box (inf where missed)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.stack([(lo - 0.0) / d[..., i] for i, (lo, _) in enumerate(box)], -1)
        t1 = np.stack([(hi - 0.0) / d[..., i] for i, (_, hi) in enumerate(box)], -1)
    tmin = np.minimum(t0, t1).max(-1)
    tmax = np.maximum(t0, t1).min(-1)
    return np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf)


def room_scene(width: int = 512, height: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [H, W, 3], distance along the ray [H, W]) of the synthetic room."""
    d = _rays(width, height)
    # 1. Inside the room every ray leaves through one wall: the smallest positive t over the six planes.
    planes = {
        "left": (0, ROOM["x"][0]),
        "right": (0, ROOM["x"][1]),
        "floor": (1, ROOM["y"][0]),
        "ceiling": (1, ROOM["y"][1]),
        "back": (2, ROOM["z"][0]),
    }
    t = np.full(d.shape[:2], np.inf)
    label = np.empty(d.shape[:2], dtype=object)
    for name, (axis, value) in planes.items():
        with np.errstate(divide="ignore"):
            tp = value / d[..., axis]
        closer = (tp > 0) & (tp < t)
        t, label = np.where(closer, tp, t), np.where(closer, name, label)
    # 2. The table in front of the back wall.
    tt = _box_hit(d, TABLE)
    closer = tt < t
    t, label = np.where(closer, tt, t), np.where(closer, "table", label)
    p = d * t[..., None]  # [H,W,3] hit points
    # 3. The framed picture on the back wall: sky, a mountain with a snow cap.
    on_back = label == "back"
    px, py = p[..., 0], p[..., 1]
    (x0, x1), (y0, y1) = PICTURE["x"], PICTURE["y"]
    in_frame = on_back & (px > x0 - 0.06) & (px < x1 + 0.06) & (py > y0 - 0.06) & (py < y1 + 0.06)
    inside = on_back & (px > x0) & (px < x1) & (py > y0) & (py < y1)
    ridge = y0 + 0.75 * (y1 - y0) * (1 - np.abs(px - 0.1) / 0.8)
    label = np.where(in_frame, "frame", label)
    label = np.where(inside, "sky", label)
    label = np.where(inside & (py < ridge), "mountain", label)
    label = np.where(inside & (py < ridge) & (py > ridge - 0.12), "snow", label)
    rgb = np.zeros(d.shape, dtype=np.float64)
    for name, colour in COLOURS.items():
        rgb[label == name] = colour
    distance = t * np.linalg.norm(d, axis=-1)
    shade = np.clip(1.15 - 0.06 * distance, 0.55, 1.0)  # a little darker with distance
    rgb = np.round(rgb * shade[..., None] / 8) * 8  # coarse steps keep the PNG small
    return np.clip(rgb, 0, 255).astype(np.uint8), distance


def disparity_image(distance: np.ndarray) -> np.ndarray:
    """Distance -> 8-bit disparity, min-max normalised, near = white (the depth convention of the workflows)."""
    disp = 1.0 / distance
    disp = (disp - disp.min()) / (disp.max() - disp.min())
    return np.round(disp * 255).astype(np.uint8)


def edit_region(width: int = 512, height: int = 512) -> np.ndarray:
    """Where the editing example regenerates (bool [H, W]): a block on the floor in front of the table."""
    mask = np.zeros((height, width), dtype=bool)
    mask[int(0.62 * height) : int(0.92 * height), int(0.30 * width) : int(0.70 * width)] = True
    return mask


def panorama_depth(width: int = 1024, height: int = 256) -> np.ndarray:
    """8-bit disparity (near = white) of a 360° cylindrical view inside a long hall, 4:1 like the 2048x512 canvas."""
    theta = (np.arange(width) + 0.5) / width * 2 * np.pi - np.pi  # azimuth, 0 = straight ahead
    half_len, half_wid, floor, ceil = 8.0, 2.5, -1.5, 2.5
    with np.errstate(divide="ignore"):
        wall = np.minimum(half_len / np.abs(np.cos(theta)), half_wid / np.abs(np.sin(theta)))  # horizontal range
    v = (np.arange(height) + 0.5) / height  # rows: top 0 .. bottom 1
    slope = (0.5 - v) * 2 * np.pi * height / width  # tan of the elevation on a cylinder with the same px scale
    horizontal = np.broadcast_to(wall[None, :], (height, width)).copy()
    with np.errstate(divide="ignore"):
        to_plane = np.where(slope[:, None] > 0, ceil / slope[:, None], floor / slope[:, None])  # [H,1]
    horizontal = np.minimum(horizontal, np.where(to_plane > 0, to_plane, np.inf))
    distance = horizontal * np.sqrt(1 + slope[:, None] ** 2)
    return disparity_image(distance)


def icon(size: int = 128) -> np.ndarray:
    """The pack's icon (RGB uint8): one disc, colour on the left half, its depth in grey on the right."""
    rgb, distance = room_scene(size, size)
    grey = disparity_image(distance)
    out = rgb.copy()
    out[:, size // 2 :] = grey[:, size // 2 :, None]
    yy, xx = np.mgrid[:size, :size] + 0.5
    outside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 > (0.47 * size) ** 2
    out[outside] = (30, 30, 36)
    return out


def images() -> dict[str, Image.Image]:
    """Every file this script writes, by path relative to the repository root."""
    rgb, distance = room_scene()
    depth = disparity_image(distance)
    alpha = np.where(edit_region(), 0, 255).astype(np.uint8)  # transparent = regenerate
    return {
        "workflows/input/depth.png": Image.fromarray(depth, "L"),
        "workflows/input/rgbd_image.png": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "workflows/input/rgbd_depth.png": Image.fromarray(np.dstack([depth, alpha]), "LA"),
        "workflows/input/room.png": Image.fromarray(rgb, "RGB"),
        "workflows/input/panorama_depth.png": Image.fromarray(panorama_depth(), "L"),
        "icon.png": Image.fromarray(icon(), "RGB"),
    }


def main() -> None:
    for rel, image in images().items():
        path = os.path.join(ROOT, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, optimize=True)
        print(f"{rel}: {image.size[0]}x{image.size[1]} {image.mode}, {os.path.getsize(path) / 1024:.1f} KB")


if __name__ == "__main__":
    main()
