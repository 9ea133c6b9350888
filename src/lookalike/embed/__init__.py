"""Embedding engines: many photos through one embedder, locally (threads + ONNX Runtime) or on Ray."""
