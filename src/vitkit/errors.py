"""User-facing errors: each message names what is wrong and how to fix it. The CLI prints them without a traceback."""


class VitkitError(Exception):
    """Base class for errors caused by user input (recipes, data, paths, settings)."""

    exit_code = 2  # what the CLI exits with; subclasses that mean "try again" or "diverged" use their own


class RecipeError(VitkitError):
    """A recipe or an override is invalid."""


class DataError(VitkitError):
    """A data source is missing, unreadable or inconsistent."""


class MissingExtraError(VitkitError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the package '{package}'. Install it with: pip install 'vitkit[{extra}]'")


class RankFailed(VitkitError):
    """Another process of a multi-process run failed; its message is repeated so that every process exits with it."""


class OutOfMemory(VitkitError):
    """The device (or the host) ran out of memory for the model, batch or images: the settings, not the data, must
    change. Recognised from torch's OutOfMemoryError and the CPU allocator's message."""

    @staticmethod
    def recognise(exc: BaseException) -> bool:
        torch_oom = type(exc).__name__ == "OutOfMemoryError"  # torch.OutOfMemoryError, without importing torch
        return torch_oom or isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)

    @staticmethod
    def reason(exc: BaseException) -> str:
        """The allocator's first line ("CUDA out of memory. Tried to allocate 2.00 GiB"), without its advice."""
        text = str(exc).strip()
        return text.splitlines()[0][:300] if text else type(exc).__name__
