"""Errors a user can cause, each carrying the SQLSTATE the server reports for it."""


class MadlibDLError(Exception):
    """A problem the caller can fix; its message names the argument and what was expected, and its
    ``hint`` (the error's HINT field in the server) what to do, where that is worth a line of its own."""

    sqlstate = "22023"  # invalid_parameter_value

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class InvalidArgument(MadlibDLError):
    sqlstate = "22023"


class ObjectExists(MadlibDLError):
    sqlstate = "42P07"  # duplicate_table


class ObjectMissing(MadlibDLError):
    sqlstate = "42P01"  # undefined_table


class PermissionDenied(MadlibDLError):
    sqlstate = "42501"  # insufficient_privilege


class NotSupported(MadlibDLError):
    sqlstate = "0A000"  # feature_not_supported


class Cancelled(MadlibDLError):
    """A cancel or statement_timeout, reported with how far the run got."""
    sqlstate = "57014"  # query_canceled


class ConnectionLost(MadlibDLError):
    """A run's connection to one of its Citus worker nodes broke, reported with how far the run got."""
    sqlstate = "08006"  # connection_failure


class WrongVersion(MadlibDLError):
    """This session's madlib_dl is not the version of the database's extension."""
    sqlstate = "55000"  # object_not_in_prerequisite_state


class UnsafeEnvironment(MadlibDLError):
    """Something on the server's machine that madlib_dl would use is not private to the server's OS user
    (a directory others can write, or a link planted where madlib_dl creates one)."""
    sqlstate = "58000"  # system_error
