"""Test-only (tests/_produced is on PYTHONPATH during the test run only): record the finding ids this
Python process's torchdoctor code creates. See td_produced.py."""

import os

if os.environ.get("TORCHDOCTOR_PRODUCED_LOG"):
    import td_produced

    td_produced.install()
