"""One row of the explain table (``Rule``) and the helpers rows share; the rows are in ``rules`` and ``history``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torchdoctor.report import Severity

__all__ = ["Match", "Rule", "different_dtypes", "dtype_name", "fixed", "numpy_sample_message"]

Match = re.Match[str]


@dataclass(frozen=True)
class Rule:
    """One row: ``pattern`` (searched in the normalised message) explains an error as finding ``id``."""

    id: str
    pattern: str
    message: Callable[[Match], str]
    exception_types: tuple[str, ...] = ()  # class names anywhere in the exception's MRO; () = any type
    applies: Callable[[Match], bool] | None = None  # a further test of the match, when a regex is not enough
    model_error: bool = False  # the model, not its input, is at fault: see ``match_exception(model_errors=)``
    # "kernel": reads a CUDA kernel's assertion line (which op, which bound); "bare": only says an assert fired.
    # A log holding both is explained by the kernel's line alone (``explain_text``).
    device_assert: str = ""
    severity: Severity | None = None  # None: the registry's; a row for a warning torch prints may lower it
    # a regex the rest of a pasted traceback must hold (its frames), for a message that alone is ambiguous;
    # such a row never matches an exception object or a message without its traceback
    context: str | None = None

    def match(self, text: str) -> Match | None:
        found = re.search(self.pattern, text)
        if found is None or (self.applies is not None and not self.applies(found)):
            return None
        return found


def fixed(text: str) -> Callable[[Match], str]:
    return lambda _match: text


def dtype_name(raw: str) -> str:
    """``torch.cuda.DoubleTensor`` / ``double`` / ``Double`` → ``double``; ``unsigned char`` → ``uint8``."""
    name = raw.strip().lower().removeprefix("c10::").removeprefix("torch.").removeprefix("cuda.").removesuffix("tensor")
    aliases = {"unsigned char": "uint8", "byte": "uint8", "long": "int64", "int": "int32", "half": "float16",
               "double": "float64", "float": "float32", "bfloat16": "bfloat16", "char": "int8", "short": "int16"}
    return aliases.get(name, name)


def different_dtypes(match: Match) -> bool:
    # "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor)" is a device mismatch, not dtype
    if match["a"] is None:  # a message that does not name the dtypes
        return True
    return dtype_name(match["a"]) != dtype_name(match["b"])


def numpy_sample_message(dtype: str) -> str:
    """default_collate met numpy arrays it cannot turn into tensors (it names their dtype, as numpy spells it)."""
    if dtype == "object":
        return ("default_collate got numpy arrays of dtype object (pandas columns holding strings, NaN or mixed "
                "types, or lists of different lengths): make each sample a numeric array, e.g. .astype(np.float32).")
    return (f"default_collate got numpy string arrays (dtype {dtype}): encode the strings as numbers (a "
            "vocabulary, label ids) in the Dataset.")
