"""Pictures inside a report page: plots and test-image thumbnails as inline PNG data URIs, and class labels."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from tl_tasks.data import load_array
from tl_tasks.errors import MissingInput
from tl_tasks.layout import RunLayout

THUMB_MAX = 64                 # thumbnails larger than this (px) are downscaled


def plot(fig, alt: str) -> dict:
    src, width, height = figure_img(fig)
    return {"src": src, "alt": alt, "width": width, "height": height}


def figure_img(fig) -> tuple[str, int, int]:
    from reports import plots

    width, height = (int(round(v * plots.DPI)) for v in fig.get_size_inches())
    return plots.figure_to_data_uri(fig), width, height


def load_test_images(here: RunLayout):
    try:
        return load_array(here, "x_test")
    except (MissingInput, OSError, ValueError):
        return None


def label(value, class_names: list[str]) -> str:
    if isinstance(value, int) and 0 <= value < len(class_names):
        return str(class_names[value])
    return "" if value is None else str(value)


def thumbnail(image) -> str:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    picture = Image.fromarray(array)
    if max(picture.size) > THUMB_MAX:
        picture.thumbnail((THUMB_MAX, THUMB_MAX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
