"""Errors that name the offending field and say how to fix it (one line each)."""


class VaenasInputError(ValueError):
    """Bad user input: the CLI prints the message as one line and exits with code 2."""


class SpecError(VaenasInputError):
    """An invalid architecture spec; the message starts with the field name."""


class SpaceError(VaenasInputError):
    """An invalid search-space declaration; the message starts with the key path."""


def check_type(key: str, value, typ, allow_none: bool = False):
    """``value`` if it is a ``typ`` (a bool is never a number), else one line naming ``key``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) and typ is not bool or not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise VaenasInputError(f"{key}: expected {names}, got {value!r}")
    return value


def check_block(key: str, value, allowed: set[str], error: type[VaenasInputError] = VaenasInputError) -> dict:
    """A config block: a mapping with only ``allowed`` keys (``{}`` for None), else one line."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{key}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise error(f"{key}.{unknown[0]}: unknown key; allowed keys are {sorted(allowed)}")
    return value


def read_text(path, missing: str, unreadable, error: type[VaenasInputError] = VaenasInputError) -> str:
    """A text file's content, or one line: ``missing`` when it is not a file, ``unreadable(exception)`` when
    it cannot be read as text."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise error(missing)
    try:
        return p.read_text()
    except (UnicodeDecodeError, OSError) as e:
        raise error(unreadable(e)) from None
