"""Keras inside a backend: TensorFlow set-up, parameter strings, model building, model state."""
