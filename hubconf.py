"""PyTorch Hub entry points, for ``torch.hub.load("path/to/slimneck-yolo", NAME, ..., source="local")``.

``custom(path="best.pt")`` returns a model that takes images (paths, numpy RGB arrays, PIL images) and returns
detections (engine/infer/hub.py); ``yolov5n`` ... ``yolov5x``, ``yolov5n_slimneck`` ... ``yolov5x_slimneck``,
``yolov7``, ``yolov7_tiny`` and ``yolov7_slimneck``, ``yolov7_tiny_slimneck`` build untrained models from cfg/.
Local use only: nothing is downloaded.
"""
from engine.infer.hub import build_untrained, load_custom

dependencies = ["torch", "torchvision", "numpy", "yaml", "cv2"]


def custom(path: str, device: str = "", imgsz: int = 640):
    """A trained .pt checkpoint or exported .onnx model, called on images (see engine.infer.hub.HubModel)."""
    return load_custom(path, device=device, imgsz=imgsz)


def _entry_point(cfg: str):
    def build(classes: int = 80, channels: int = 3, pretrained: bool = False):
        return build_untrained(cfg, classes=classes, channels=channels, pretrained=pretrained)

    build.__doc__ = f"An untrained {cfg} model (classes: number of classes)."
    build.__name__ = cfg.removesuffix(".yaml").replace("-", "_")
    return build


yolov5n = _entry_point("yolov5n.yaml")
yolov5n_slimneck = _entry_point("yolov5n-slimneck.yaml")
yolov5s = _entry_point("yolov5s.yaml")
yolov5s_slimneck = _entry_point("yolov5s-slimneck.yaml")
yolov5m = _entry_point("yolov5m.yaml")
yolov5m_slimneck = _entry_point("yolov5m-slimneck.yaml")
yolov5l = _entry_point("yolov5l.yaml")
yolov5l_slimneck = _entry_point("yolov5l-slimneck.yaml")
yolov5x = _entry_point("yolov5x.yaml")
yolov5x_slimneck = _entry_point("yolov5x-slimneck.yaml")
yolov7 = _entry_point("yolov7.yaml")
yolov7_tiny = _entry_point("yolov7-tiny.yaml")
yolov7_slimneck = _entry_point("yolov7-slimneck.yaml")
yolov7_tiny_slimneck = _entry_point("yolov7-tiny-slimneck.yaml")
