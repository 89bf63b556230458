"""Errors a user can act on: the CLI prints their message and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad params, bad data or a missing file: the message names the key, file, row or expectation."""

    exit_code = 2


class DataError(UserError):
    """Input data that breaks the contract: a missing column, undecodable bytes, a corrupt archive."""


class ValidationFailed(UserError):
    """At least one data expectation failed; the message is the validation summary."""

    exit_code = 3
