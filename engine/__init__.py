"""The training side of slimneck-yolo: data, loss, metrics, trainer, plots."""
