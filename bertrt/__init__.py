"""bertrt: an optimized ONNX Runtime inference runtime for exported BERT models."""

from bertrt.errors import BertrtError

__all__ = ["BertrtError"]
__version__ = "0.1.0"
