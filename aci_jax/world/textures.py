"""Stripe textures generated from their names, e.g. `vertical_10`, `horizontal_8_rb`.

Name grammar: `{vertical|horizontal}_{N}[_{bw|rb}]`: N stripe pairs across the texture, in
black/white (default) or red/blue. Textures are 2D; on a sphere, `vertical` stripes run along
meridians (pole to pole), so an object turned 90° about y shows them horizontally.
"""

from __future__ import annotations

import re

import numpy as np

PALETTES = {"bw": ((0, 0, 0), (255, 255, 255)), "rb": ((255, 0, 0), (0, 0, 255))}
_NAME = re.compile(r"^(vertical|horizontal)_([1-9][0-9]*)(?:_(bw|rb))?$")
VALID_NAMES = "'vertical_N' or 'horizontal_N' with N >= 1, optionally suffixed '_bw' or '_rb'"
PIXELS_PER_STRIPE = 4


def stripe_texture(name: str) -> np.ndarray:
    """RGB uint8 image (H, W, 3) for a stripe texture name; columns (u) vary for `vertical`."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"unknown texture '{name}'; valid: {VALID_NAMES}")
    orientation, n, palette = m.group(1), int(m.group(2)), m.group(3) or "bw"
    size = 2 * n * PIXELS_PER_STRIPE
    stripe = (np.arange(size) // PIXELS_PER_STRIPE) % 2
    colours = np.array(PALETTES[palette], dtype=np.uint8)[stripe]  # (size, 3)
    if orientation == "vertical":
        return np.broadcast_to(colours[None, :, :], (size, size, 3)).copy()
    return np.broadcast_to(colours[:, None, :], (size, size, 3)).copy()


def validate_texture_name(name: str) -> None:
    if _NAME.match(name) is None:
        raise ValueError(f"unknown texture '{name}'; valid: {VALID_NAMES}")
