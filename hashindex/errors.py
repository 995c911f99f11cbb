"""The exceptions of the `hashindex` package."""


class HashIndexError(Exception):
    """Base class of every error raised on purpose by `hashindex`."""


class IndexFormatError(HashIndexError):
    """Files on disk are missing, corrupt, or of another format version or shape."""
