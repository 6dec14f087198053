"""The data pipeline: dataset YAMLs (config), image files (images), labels and their cache (labels), the dataset
(dataset), augmentation (augment) and the loaders (loader)."""
