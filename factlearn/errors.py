"""Errors a user can cause.

Library code raises :class:`UserError` for bad input (a missing file, a malformed row, a wrong
option, a mismatched checkpoint). The CLI turns it into one line on stderr and exit code 2.
Programming errors are left as ordinary exceptions so they stay loud.
"""


class UserError(Exception):
    """Bad input from the user; the message names the file, line or option at fault."""


class Interrupted(KeyboardInterrupt):
    """The user stopped a command (Ctrl-C) and it stopped cleanly; the message says what was kept
    and how to continue. The CLI prints it and exits with 130, as for any Ctrl-C."""
