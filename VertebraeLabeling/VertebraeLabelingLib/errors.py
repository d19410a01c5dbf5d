"""Errors the core raises for things a user can fix; their message is shown as it is."""


class VertebraeLabelingError(Exception):
    """Base class: the message is written for the user, not for a developer."""


class InputImageError(VertebraeLabelingError):
    """The image cannot be labeled: missing, corrupt, 2-D, empty, not a CT, NaN, too large..."""


class ModelFileError(VertebraeLabelingError):
    """The model file is missing, corrupt, not ours, or its checksum does not match."""


class CancelledError(VertebraeLabelingError):
    """The user cancelled the run; nothing was written."""
