"""Scoring backends: ONNX Runtime (no torch) and torch with a dynamic batcher."""
