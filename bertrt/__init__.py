"""bertrt: an optimized ONNX Runtime inference runtime for exported BERT models.

Example::

    import bertrt
    bundle = bertrt.load("models/minilm")            # device="auto", precision="fp32"
    bundle.classifier("I love Paris")[0].label
    bundle.embedder(["a", "b"], pooling="mean", normalize=True)[0].vector
    bundle.qa.answer("Where is the tower?", "The tower is in Paris.").best.text

Importing bertrt never imports torch, transformers or optimum.
"""

from bertrt.bundle import Bundle, load
from bertrt.classify import Classifier
from bertrt.embed import Embedder
from bertrt.errors import BertrtError, BundleError, ConfigError, DeviceError, InputError
from bertrt.options import RuntimeOptions
from bertrt.qa import QuestionAnswerer
from bertrt.results import Answer, Classification, Embedding, LabelScore, QAResult
from bertrt.types import Device, Pooling, Precision, Task

__all__ = [
    "Answer",
    "BertrtError",
    "Bundle",
    "BundleError",
    "Classification",
    "Classifier",
    "ConfigError",
    "Device",
    "DeviceError",
    "Embedder",
    "Embedding",
    "InputError",
    "LabelScore",
    "Pooling",
    "Precision",
    "QAResult",
    "QuestionAnswerer",
    "RuntimeOptions",
    "Task",
    "load",
]
__version__ = "0.1.0"
