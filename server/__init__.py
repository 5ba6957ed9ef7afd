"""The gateway (REST + gRPC). Torch-free: depends on `contract`, onnxruntime/tritonclient and faiss only."""
