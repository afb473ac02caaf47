"""The one rule of "the user's line": torch, torchdoctor, the standard library and installed packages are not."""

from __future__ import annotations

import json
import sys

import pytest

from torchdoctor.frames import is_library_file, user_frame


def test_installed_packages_are_library_code_and_the_users_files_are_not(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("pass\n")
    assert not is_library_file(str(script))
    assert is_library_file(pytest.__file__)  # an installed package (site-packages), like transformers or lightning
    assert is_library_file(json.__file__)  # the standard library
    assert is_library_file("<string>")


def test_user_frame_skips_a_library_frame_between_the_user_and_the_error(tmp_path):
    # the user's code calls a library (site-packages) that raises: the user's own call is the line to name
    script = tmp_path / "train.py"
    script.write_text("import jsonschema\n\ndef main():\n    jsonschema.validate(1, {'type': 'string'})\n")
    namespace: dict = {}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    try:
        namespace["main"]()
    except Exception:  # jsonschema.ValidationError, raised inside site-packages
        frame = user_frame(sys.exc_info()[2])
    assert frame is not None and frame["file"] == str(script) and frame["line"] == 4
