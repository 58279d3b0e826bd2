"""Offline side: data, labels, multi-task training, evaluation and artifact export."""
