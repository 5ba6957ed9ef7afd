"""The gateway (REST + gRPC). Torch-free: depends on `contract`, `wire`, onnxruntime / tritonclient, and faiss or
pymilvus (the index engine, inside `server/blat_gateway/index/`)."""
