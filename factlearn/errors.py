"""Errors a user can cause.

Library code raises :class:`UserError` for bad input (a missing file, a malformed row, a wrong
option, a mismatched checkpoint). The CLI turns it into one line on stderr and exit code 2.
Programming errors are left as ordinary exceptions so they stay loud.
"""


class UserError(Exception):
    """Bad input from the user; the message names the file, line or option at fault."""
