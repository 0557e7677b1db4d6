"""A workspace's sources by label (components.privacy.names): what every stored place names a source by.

The commands turn a source the operator gives (a path, ``medmnist:<name>``, nothing for the embedded
cohort) into its label with `register_source`, which records a path source in the workspace's local
map (``.medgate/source_names.json``: never pushed, never packaged, left out of the PHI scan), and pass
the label to the flows: Prefect's parameters, names and tags, the registry, summary.json, the
reports and notifications carry the label, and `source_path` turns it back into the path where the
data is read. `redact` takes known paths out of a text that leaves the process (an error);
`reveal` adds them back for the operator's own terminal.
"""

from __future__ import annotations

from pathlib import Path

from components.privacy.names import SourceNames, is_known, source_label
from flows.settings import Settings

SOURCE_NAMES = "source_names.json"


def source_names(settings: Settings) -> SourceNames:
    """The workspace's map of labels to paths."""
    return SourceNames(settings.state_dir / SOURCE_NAMES)


def register_source(settings: Settings, source: str, name: str | None = None) -> str:
    """The label of `source` (a path, a label already registered, or a public name), a path source
    recorded in the workspace's map under it.

    Raises:
        ValueError: `name` is not a valid label.
    """
    names = source_names(settings)
    if is_known(source) or (not name and names.path_of(source) is not None):
        return source
    label = source_label(source, settings.deid_salt, name)
    names.register(label, Path(source), settings.deid_salt)
    return label


def label_of(settings: Settings, source: str) -> str:
    """The label of `source` without recording anything (names a run before it starts)."""
    if is_known(source) or source_names(settings).path_of(source) is not None:
        return source
    return source_label(source, settings.deid_salt)


def registered_path(settings: Settings, label: str) -> Path | None:
    """The path a registered label stands for."""
    path = source_names(settings).path_of(label)
    return Path(path) if path is not None else None


def redact(settings: Settings, text: str) -> str:
    """`text` with every path of the workspace's sources replaced by its label or file pseudonym."""
    return source_names(settings).redact(text)


def reveal(settings: Settings, text: str) -> str:
    """`text` with labels and file pseudonyms followed by their paths: for the operator's terminal only."""
    return source_names(settings).reveal(text)
