"""Renderers: Rich for people (``human``), plain JSON for machines (``json``)."""
