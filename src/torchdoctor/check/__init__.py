"""``torchdoctor check``: the CI pre-flight that runs every check configured in ``[tool.torchdoctor]``."""
