"""Workflows built on the engine: compare, rank, multi-task, federated."""
