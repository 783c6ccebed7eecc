"""vitkit: train, fine-tune, evaluate and deploy Vision Transformers."""

__version__ = "0.1.0"
