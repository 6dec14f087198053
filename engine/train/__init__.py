"""Training: the trainer (trainer) and the pieces it runs: loss, optim, ema, autoanchor, guard, precision and
tensorboard."""
