"""Dataset YAMLs, hyperparameter YAMLs and the built-in demo dataset generator (``data.shapes``)."""
