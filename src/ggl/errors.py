"""The one exception type ``ggl`` reports without a traceback."""


class GglError(Exception):
    """An expected problem the user can fix (bad params, missing or unverifiable data, a run
    not done yet): ``ggl`` prints its message on one line. Anything else keeps its traceback."""


class MissingRunError(GglError):
    """A run params ask for has no output yet."""
