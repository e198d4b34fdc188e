"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class EdgeDistillError(Exception):
    """A mistake in the user's input: a bad value, a missing file, a mismatched cache.

    The message must name the offending value and say what is allowed, e.g.
    ``Unknown student 'resnet19'. Valid: resnet18, resnet34, ...``.
    """


class ConfigError(EdgeDistillError):
    """A config value or flag that is out of range or unknown."""


class DataError(EdgeDistillError):
    """A dataset that is missing, malformed, or asked for a split it does not have."""


class CacheMismatchError(EdgeDistillError):
    """A teacher-output cache produced by another teacher, dataset or view than requested."""


class WeightsNotFoundError(EdgeDistillError):
    """Model weights that cannot be found locally or downloaded."""
