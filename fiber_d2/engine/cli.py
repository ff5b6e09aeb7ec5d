"""What the command-line tools print for an error whose message names what is wrong: one line."""
from __future__ import annotations

__all__ = ["error_line"]


def error_line(error: BaseException) -> str:
    """The message of `error` on one line. For an error re-raised from a data-loader worker, whose message PyTorch
    fills with "Caught X in DataLoader worker process N", the worker's traceback and then "module.X: message", the
    worker's own message: its last line, without the exception class."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and any("Original Traceback" in line for line in lines[:2]):
        return lines[-1].split(": ", 1)[-1].strip()
    return " ".join(" ".join(lines).split())
