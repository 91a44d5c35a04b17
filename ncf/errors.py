"""Errors that jobs turn into a one-line message and exit status 2."""


class InputError(Exception):
    """Bad input that stops a job: the message is one line naming the path and what is wrong."""
