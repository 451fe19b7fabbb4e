"""The one exception type the CLI turns into a single clear error line and a non-zero exit."""


class NLAError(Exception):
    """A user-facing error: bad input, bad configuration, or an environment problem.

    The message must be one line that tells the user what is wrong and, where possible, what to do.
    """
