"""Errors for bad input: each message names the file, field or shape that is wrong."""


class InputError(ValueError):
    """Bad input file or array; the message names the file, the array and what is wrong."""
