"""Optional NNI strategies, registered as ``nni-evolution`` and ``nni-rl``; need ``pip install -e '.[nni]'``."""

from __future__ import annotations

from search_space import SearchSpace, VaenasInputError

from . import OPTIONAL, register

EXTRA = "pip install -e '.[nni]'"


def nni_available() -> bool:
    try:
        import nni  # noqa: F401
    except ImportError:
        return False
    return True


def _missing(name: str):
    def factory(space: SearchSpace, seed: int, **kw):
        raise VaenasInputError(f"strategy: {name!r} needs NNI 3.0, which is not installed; install the extra "
                               f"with `{EXTRA}` or choose another strategy")

    return factory


for _name in ("nni-evolution", "nni-rl"):
    if not nni_available():
        OPTIONAL[_name] = "nni"
        register(_name)(_missing(_name))
