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


class StorageError(RecsysError):
    """The disk is full or the home is not writable: one line naming the path and what to do."""

    exit_code = 7


STORAGE_ERRNOS = {28: "the disk is full", 122: "the disk quota is exceeded", 30: "the file system is read-only",
                  13: "permission denied", 1: "the operation is not permitted"}  # ENOSPC EDQUOT EROFS EACCES EPERM


def storage_error(exc: BaseException) -> StorageError | None:
    """A :class:`StorageError` for an OS or DuckDB error that says the disk is full or not writable, else
    None. DuckDB reports these as text ("No space left on device", "Read-only file system")."""
    errno = getattr(exc, "errno", None)
    text = str(exc)
    if errno in STORAGE_ERRNOS:
        where = getattr(exc, "filename", None) or "RECSYS_HOME"
        why = STORAGE_ERRNOS[errno]
    elif "No space left on device" in text or "Read-only file system" in text or "Disk quota exceeded" in text:
        where = next((word.strip("\"'():,") for word in text.split() if word.strip("\"'(").startswith("/")),
                     "RECSYS_HOME")
        why = "the disk is full" if "space" in text or "quota" in text else "the file system is read-only"
    else:
        return None
    return StorageError(f"cannot write {where}: {why}. Free space there, or point RECSYS_HOME at a writable "
                        "disk with room (the warehouse, models and outputs live under it)")
