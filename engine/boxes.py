"""Box format conversions shared by the data pipeline, the loss, NMS and metrics.

Formats: ``xyxy`` = corners (x1, y1, x2, y2); ``xywh`` = centre and size (cx, cy, w, h).
A trailing ``n`` means normalised to [0, 1] by the image width and height.
Every function accepts a torch tensor or a numpy array of shape (..., 4) and returns the same type.
"""
from __future__ import annotations

import numpy as np
import torch



def _empty_like(x):
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xywh2xyxy(x):
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    y = _empty_like(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xyxy2xywh(x):
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x, width: float, height: float, pad_x: float = 0.0, pad_y: float = 0.0):
    """Normalised (cx, cy, w, h) -> pixel corners, optionally shifted by a letterbox padding."""
    y = xywh2xyxy(x)
    y[..., 0] = y[..., 0] * width + pad_x
    y[..., 2] = y[..., 2] * width + pad_x
    y[..., 1] = y[..., 1] * height + pad_y
    y[..., 3] = y[..., 3] * height + pad_y
    return y


def xyxy2xywhn(x, width: float, height: float, clip: bool = False):
    """Pixel corners -> normalised (cx, cy, w, h); ``clip`` first clamps the corners to the image."""
    if clip:
        x = clip_boxes(_empty_like(x), (height, width))
    y = xyxy2xywh(x)
    y[..., 0] /= width
    y[..., 2] /= width
    y[..., 1] /= height
    y[..., 3] /= height
    return y


def clip_boxes(boxes, shape: tuple[int, int]):
    """Clamp xyxy boxes in place to an image of ``shape`` = (height, width); returns them."""
    height, width = shape[:2]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, width)
        boxes[..., 1].clamp_(0, height)
        boxes[..., 2].clamp_(0, width)
        boxes[..., 3].clamp_(0, height)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, width)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, height)
    return boxes


def scale_boxes(boxes, from_shape: tuple[int, int], to_shape: tuple[int, int],
                ratio_pad: tuple | None = None):
    """Map xyxy boxes from a letterboxed image of ``from_shape`` (h, w) back to the original ``to_shape``.

    ``ratio_pad`` = ((gain_h, gain_w), (pad_x, pad_y)) as recorded by the letterbox; when absent the
    gain and centred padding are recomputed from the two shapes. Boxes are modified in place and clipped.
    """
    if ratio_pad is None:
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad_x = (from_shape[1] - to_shape[1] * gain) / 2
        pad_y = (from_shape[0] - to_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad_x, pad_y = ratio_pad[1]
    boxes[..., [0, 2]] -= pad_x
    boxes[..., [1, 3]] -= pad_y
    boxes[..., :4] /= gain
    return clip_boxes(boxes, to_shape)
