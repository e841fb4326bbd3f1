"""The bertrt export stage: fine-tune, convert to ONNX, optimize and validate BERT models.

Needs the export extra (`pip install 'bertrt[export]'`): torch, transformers, optimum.
"""
