"""Third-party libraries' log records and warnings go to a log file, never to the console.

The console keeps medgate's own messages, where each problem is one line (a skipped file and why);
the file keeps the libraries' detail behind it, e.g. pydicom's decoder tracebacks
(`LOGGER.exception` in `pydicom.pixels.decoders.base`) and its `warn_and_log` warnings.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Top-level logger names of medgate's own code and of its orchestrator; every other logger is a library's.
OWN_LOGGERS = frozenset({"cli", "components", "flows", "registry", "services", "medgate", "prefect"})


def is_own(record: logging.LogRecord) -> bool:
    """Whether `record` comes from medgate or Prefect rather than a library."""
    return record.name.split(".", 1)[0] in OWN_LOGGERS


class _LibraryRecords(logging.Handler):
    """Passes the libraries' records reaching the root logger to `target`."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target
        self.addFilter(lambda record: not is_own(record))

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
    """`warnings.showwarning` as `logging.captureWarnings` sets it: a record of the `py.warnings` logger."""
    logging.getLogger("py.warnings").warning(warnings.formatwarning(message, category, filename, lineno, line))


def library_logs_to(target: logging.Handler) -> Callable[[], None]:
    """Send every library's log records and every Python warning to `target`, and keep them off the
    root logger's other handlers (the console), until the returned function is called."""
    root = logging.getLogger()
    shown = list(root.handlers)
    for handler in shown:
        handler.addFilter(is_own)
    forward = _LibraryRecords(target)
    root.addHandler(forward)
    # Set and restored here rather than by logging.captureWarnings, which Great Expectations turns on at import.
    shown_warning, warnings.showwarning = warnings.showwarning, _log_warning

    def detach() -> None:
        warnings.showwarning = shown_warning
        root.removeHandler(forward)
        for handler in shown:
            handler.removeFilter(is_own)

    return detach


@contextmanager
def library_log(path: Path) -> Iterator[Path]:
    """`library_logs_to` a file at `path` while the block runs; the file is written only when a library
    logs or warns (its parent folder is created now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    detach = library_logs_to(handler)
    try:
        yield path
    finally:
        detach()
        handler.close()
