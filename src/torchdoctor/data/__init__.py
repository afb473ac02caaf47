"""``torchdoctor data``: probe a DataLoader (and, with a model, a real training step on its batches).

collect → judge → render: ``probe.py`` gathers facts (``loader``, ``read``, ``samples``, ``labels``,
``model`` do the I/O), ``checks.py`` and its siblings judge them, ``sections.py`` groups the findings for
people, and ``api.probe_loader`` returns the ``Report``.
"""
