"""Errors a user can cause, each carrying the SQLSTATE the server reports for it."""


class MadlibDLError(Exception):
    """A problem the caller can fix; its message names the argument and what was expected."""

    sqlstate = "22023"  # invalid_parameter_value


class InvalidArgument(MadlibDLError):
    sqlstate = "22023"


class ObjectExists(MadlibDLError):
    sqlstate = "42P07"  # duplicate_table


class ObjectMissing(MadlibDLError):
    sqlstate = "42P01"  # undefined_table


class NotSupported(MadlibDLError):
    sqlstate = "0A000"  # feature_not_supported
