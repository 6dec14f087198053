"""The model side of slimneck-yolo: the registry, the YAML parser, the modules and the detection model."""
from models.registry import ConfigError
from models.yolo import DetectionModel

__all__ = ["ConfigError", "DetectionModel"]
