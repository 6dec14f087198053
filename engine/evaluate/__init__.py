"""Evaluation: the validation loop (validate), metrics and their plots (metrics, plots), COCO files and pycocotools
scoring (coco), and how sure a comparison is (stats)."""
