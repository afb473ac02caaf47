"""Callbacks for the trainers people use: ``integrations.transformers`` and ``integrations.lightning``.

Importing this package imports neither library; each submodule imports its own.
"""
