"""Errors that name the offending field and say how to fix it (one line each)."""


class VaenasInputError(ValueError):
    """Bad user input: the CLI prints the message as one line and exits with code 2."""


class SpecError(VaenasInputError):
    """An invalid architecture spec; the message starts with the field name."""


class SpaceError(VaenasInputError):
    """An invalid search-space declaration; the message starts with the key path."""
