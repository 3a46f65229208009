"""jaxicl's exceptions: one base class so callers can catch everything the library refuses."""


class JaxiclError(Exception):
    """Base class of every error jaxicl raises on purpose."""


class ModelNotFoundError(JaxiclError, FileNotFoundError):
    """A model name, path or Hub id that does not resolve to a checkpoint."""


class CheckpointError(JaxiclError, ValueError):
    """A checkpoint file that is truncated, corrupt, of an unsupported architecture, or whose
    tensors do not have the shapes its config implies."""


class InputError(JaxiclError, ValueError):
    """Token ids or prompts the model cannot take: out-of-vocabulary ids, too long for the
    context window, mismatched shapes."""


class DataError(JaxiclError, ValueError):
    """A task, split, data file or template the loader cannot use."""


class TrainingError(JaxiclError, RuntimeError):
    """Finetuning that cannot go on, e.g. a NaN or infinite loss."""


class DivergenceError(TrainingError):
    """A non-finite loss or gradient during finetuning: a learning-rate sweep marks the rate and
    goes on, where any other caller stops."""


class StorageError(JaxiclError, OSError):
    """A file that could not be written (a full disk, a read-only directory): the message names the
    path and the bytes, and nothing partial is left behind."""
