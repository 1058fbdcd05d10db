"""factlearn: continual learning of facts about images with Memory Aware Synapses."""

__version__ = "0.1.0"


def load(path, task=None, device="cpu"):
    """Load the trained model of a run directory; see :func:`factlearn.run.load`."""
    from .run import load as _load

    return _load(path, task, device)


__all__ = ["__version__", "load"]
