"""Typed Python clients (sync and async) and the command line for the UniRank gRPC API."""
