"""User-facing errors: the CLI prints these as one line, the server as a 4xx JSON body."""


class FastMuseError(Exception):
    """Bad input or a broken file: the message names what is wrong and what is accepted."""


class ConfigError(FastMuseError, ValueError):
    """A config file or value that does not match its dataclass."""


class CheckpointError(FastMuseError):
    """A checkpoint folder that is missing, corrupt, truncated or not ours."""


class DataError(FastMuseError, ValueError):
    """A dataset that is missing, empty or inconsistent."""
