"""The UniRank model server: composition root, servicers, pipeline, backends."""
