"""The engine behind the entry points, in the order of the pipeline:

- ``engine.data``: dataset YAMLs and splits, images, labels and their cache, augmentation, the loaders;
- ``engine.train``: the trainer and what it runs (loss, optimizer and schedules, EMA, AutoAnchor, the
  non-finite guard, precision, TensorBoard);
- ``engine.evaluate``: the validation loop, metrics and their plots, COCO files and scoring, comparison statistics;
- ``engine.infer``: loading a detector (PyTorch or exported), NMS, test-time augmentation, sources, results, export.

Shared by all four: ``boxes`` (box formats), ``torch_utils`` (devices, seeding, DDP, timing), ``visualize``
(drawing) and ``cli`` (what every entry point shares). Imports run one way: entry points -> engine -> models.
"""
