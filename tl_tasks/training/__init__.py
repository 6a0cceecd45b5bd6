"""Training: model builders, the training loop with its checkpoints and resume, evaluation and per-image predictions.
Importing the package loads nothing heavy; Keras loads with the modules that build, train or evaluate."""
