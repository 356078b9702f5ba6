"""The one base of every error the package reports to a user.

A ``DiagnosticsError`` is bad input or a refusal (a missing or malformed report, an unknown name,
a release that cannot be installed): its message is one line that says what was found and what
is needed. ``diagnostics`` prints it once (``diagnostics: error: ...``, exit status 2), wherever
in the package it was raised; anything else is a bug and keeps its traceback.
"""


class DiagnosticsError(Exception):
    """Bad input or a refusal; the message is one line for the user."""


class UsageError(DiagnosticsError, ValueError):
    """A value given on the command line or in a config that is not one the package accepts."""
