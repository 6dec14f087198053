"""Inference and deployment: loading a detector (detector), exported-model backends (backends), NMS (nms),
test-time augmentation (tta), media sources (sources), written results (results), export (export) and the
torch.hub models (hub)."""
