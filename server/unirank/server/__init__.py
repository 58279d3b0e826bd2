"""The UniRank model server: composition root, servicers, pipeline, backends.

May import: ``unirank.artifact``, ``unirank.v1`` and its own modules; ``unirank.model`` (torch)
in the torch backend only; never ``unirank.training`` or ``unirank.client``.
"""
