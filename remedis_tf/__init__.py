"""remedis-tf: REMEDIS (BiT + self-supervised pretraining) in TensorFlow / Keras 3."""

__version__ = "0.1.0"
