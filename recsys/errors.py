"""Errors a user will see. Each message names the file, the rows and what to do."""


class RecsysError(Exception):
    """Base class; the CLI turns these into a message and an exit code."""

    exit_code = 1


class ConfigError(RecsysError):
    """A setting, mapping or command-line argument is wrong."""

    exit_code = 2


class SourceUnavailableError(RecsysError):
    """A data source cannot be reached or read (offline download, missing folder)."""

    exit_code = 2


class SchemaMismatchError(RecsysError):
    """A file lacks a column the mapping names."""

    exit_code = 2


class IngestFailedError(RecsysError):
    """One or more files could not be parsed at all; the others were still loaded."""

    exit_code = 3


class ValidationFailedError(RecsysError):
    """A critical expectation failed: the batch was held back in staging."""

    exit_code = 4


class PublishGateError(RecsysError):
    """The output failed the publish gate; the last good partition stays."""

    exit_code = 5


class EmptyWarehouseError(RecsysError):
    """A step needs data that is not in the warehouse yet."""

    exit_code = 2


class RunLockedError(RecsysError):
    """Another run holds this home's run lock (one nightly at a time)."""

    exit_code = 6


class WarehouseBusyError(RecsysError):
    """Another process holds the warehouse file longer than we wait."""

    exit_code = 6
