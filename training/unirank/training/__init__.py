"""Offline side: data, labels, multi-task training, evaluation and artifact export.

May import: ``unirank.artifact`` and ``unirank.model``; never ``unirank.server`` or
``unirank.client`` (the artifact is the only thing that crosses to serving).
"""
