"""Helpers the tests share (importable as ``support.*``: pyproject puts tests/ on the path)."""
