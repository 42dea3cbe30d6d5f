"""Model Gallery trainer: data preparation, DeepSpeed / DDP training jobs, ONNX export, and the service around them."""
