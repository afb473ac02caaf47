"""Find the errors in a pasted traceback or a log: ``parse_errors`` (text → errors) and ``explain_text``.

Robust to what copy-paste and logs do to a traceback: a log prefix on every line (timestamps, levels,
``[rank0]:``), progress bars, carriage returns, a message reflowed over several lines, curly quotes (the
rule table normalises those), DataLoader workers' ``Caught X in DataLoader worker process N`` wrappers (the
wrapper is skipped, the original exception kept), and chained exceptions (printed root cause first, and
reported in that order). Lines outside any traceback that a rule knows (the CUDA assert line, the
signal handler's bus-error line) count as errors too. No torch import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchdoctor.explain.rules import RULES, match_exception, normalize_message
from torchdoctor.report import Finding, Report

__all__ = ["ParsedError", "explain_text", "parse_errors"]

MAX_MESSAGE_LINES = 30

_LOG_PREFIX = re.compile(
    r"^(?:\s*(?:\[?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\]?"  # 2024-05-01 12:00:00,123
    r"|\[?\d\d:\d\d:\d\d(?:[.,]\d+)?\]?"  # 12:00:00
    r"|\[(?:rank|default)\d+\]:"  # torchrun's per-rank prefixes
    r"|\[?(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\]?(?::[\w.]+:|\s*[:|-])?"  # levels, "ERROR:root:"
    r")[ \t]?)+")
_EXCEPTION_LINE = re.compile(r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit))"
                             r"(?::\s?(?P<message>.*))?$")
_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+")
_PROGRESS = re.compile(r"\d+%\|")
_TOOL_LINE = re.compile(r"^(?P<prefix>[a-z][\w-]*: )")  # "wandb: ...", "warnings: ..." after a traceback
# a line ending so is a finished sentence (or a tool's line): a "word: " line after it is a new line's prefix
_SENTENCE_END = (".", "!", "?", ")", "]", ":")
_FRAME = re.compile(r'^\s*File ["\u201c\u201d]')  # curly after copy-paste too
_SOURCELESS_FRAME = re.compile(r'^\s*File ["\u201c\u201d]<[^>]*>["\u201c\u201d]')
_STOP = ("Traceback (most recent call last):", "Original Traceback (most recent call last):",
         "During handling of the above exception", "The above exception was the direct cause")


@dataclass(frozen=True)
class ParsedError:
    """One error found in the text: its type (None for a bare known line), message, and 1-based line."""

    type: str | None
    message: str
    line_in_input: int

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type, "message": self.message, "line_in_input": self.line_in_input}

    def as_text(self) -> str:
        return f"{self.type}: {self.message}" if self.type else self.message


def parse_errors(text: str) -> list[ParsedError]:
    """Every exception line (with its continuation lines) and every known bare error line, in input order."""
    raw = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [_LOG_PREFIX.sub("", line, count=1) for line in raw]
    prefixed = [len(line) != len(stripped) for line, stripped in zip(raw, lines, strict=True)]
    errors: list[ParsedError] = []
    used: set[int] = set()
    index = 0
    while index < len(lines):
        found = _exception_at(lines, index)
        if found is None:
            index += 1
            continue
        end = _message_end(lines, prefixed, index)
        used.update(range(index, end))
        message = normalize_message(" ".join([found["message"] or "", *lines[index + 1:end]]))
        if not _WORKER_WRAPPER.match(message):  # the worker's original exception follows; keep that one
            errors.append(ParsedError(found["type"], message, index + 1))
        index = end
    errors.extend(_known_bare_lines(lines, used))
    errors.sort(key=lambda error: error.line_in_input)
    return _distinct(errors)


def explain_text(text: str, source: str) -> Report:
    """The ``explain`` report for a log or traceback: each error found, and one finding per distinct match."""
    errors = parse_errors(text)
    if not errors and text.strip():  # a bare message with no type ("Target 5 is out of bounds")
        errors = [ParsedError(None, normalize_message(text), 1)]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # numbered as parse_errors numbers them
    explained = [(error, match_exception(error.as_text(), model_errors=True,
                                         context=_frames_before(lines, error.line_in_input)))
                 for error in errors]
    kernel_line = any(found is not None and found.rule.device_assert == "kernel" for _, found in explained)
    findings: dict[str, Finding] = {}
    for error, explanation in explained:
        if explanation is None or explanation.id in findings:
            continue
        if kernel_line and explanation.rule.device_assert == "bare":  # the kernel's line says more
            continue
        finding = explanation.finding()
        location = f"{source}:{error.line_in_input}"
        findings[explanation.id] = Finding(finding.id, finding.code, finding.severity, finding.message,
                                           finding.fix, location, finding.details)
    result = {"source": source, "errors_found": [error.to_dict() for error in errors], "matched": list(findings)}
    return Report("explain", tuple(findings.values()), result)


def _frames_before(lines: list[str], line_in_input: int) -> str:
    """The traceback above an error (from its header, at most 200 lines up): where an ambiguous row looks."""
    start = max(0, line_in_input - 200)
    above = lines[start:line_in_input - 1]
    headers = [index for index, line in enumerate(above) if line.strip().startswith(_STOP[:2])]
    return "\n".join(above[headers[-1]:] if headers else above)


def _exception_at(lines: list[str], index: int) -> re.Match[str] | None:
    # the line under a frame is its source, except under code with no file (python -c, exec, <stdin>, frozen
    # modules), where Python prints none and the exception follows at once
    if index > 0 and _FRAME.match(lines[index - 1]) and not _SOURCELESS_FRAME.match(lines[index - 1]):
        return None
    return _EXCEPTION_LINE.match(lines[index].strip())


def _message_end(lines: list[str], prefixed: list[bool], start: int) -> int:
    """One past the last continuation line of the message starting at ``start`` (reflowed, multi-line).

    It ends at a blank line, a traceback or chain header, a frame, a progress bar, another exception, a
    line whose log prefix differs from the message's first line, or a tool's ``wandb:``-style line.
    """
    end = start + 1
    while end < len(lines) and end - start < MAX_MESSAGE_LINES:
        line = lines[end].strip()
        if (not line or line.startswith(_STOP) or _FRAME.match(line) or _PROGRESS.search(line)
                or set(line) <= set("^~ ") or prefixed[end] != prefixed[start]
                or _is_tool_line(lines, end)
                or _exception_at(lines, end) is not None):
            break
        end += 1
    return end


def _is_tool_line(lines: list[str], index: int) -> bool:
    """A ``wandb: ...`` line from another tool, not a message reflowed where a word met its ``: ``.

    A reflow breaks mid-sentence ("...: undefined" / "symbol: _ZN..."); a tool's line comes after a finished
    one, or in a run of lines sharing its prefix (wandb prints several).
    """
    match = _TOOL_LINE.match(lines[index].strip())
    if match is None:
        return False
    after_finished = lines[index - 1].rstrip().endswith(_SENTENCE_END)
    in_a_run = index + 1 < len(lines) and lines[index + 1].strip().startswith(match["prefix"])
    return after_finished or in_a_run


def _known_bare_lines(lines: list[str], used: set[int]) -> list[ParsedError]:
    """Lines outside exceptions that a rule explains by themselves (a CUDA assert, a worker's bus error)."""
    found = []
    for index, line in enumerate(lines):
        text = normalize_message(line)
        if index not in used and text and any(rule.match(text) for rule in RULES if not rule.exception_types):
            found.append(ParsedError(None, text, index + 1))
    return found


def _distinct(errors: list[ParsedError]) -> list[ParsedError]:
    seen: set[tuple[str | None, str]] = set()
    kept = []
    for error in errors:
        key = (error.type, normalize_message(error.message))
        if key not in seen:
            seen.add(key)
            kept.append(error)
    return kept
