"""Option types shared by the ``factlearn`` commands."""

from __future__ import annotations

import math

import click

# Seeds feed numpy and torch generators: non-negative and within 32 bits.
SEED = click.IntRange(0, 2**32 - 1)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which pass its comparisons)."""

    def convert(self, value, param, ctx):
        """The number, refused when it is nan or infinite."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


# --device of every command that runs the model (read by factlearn.device.resolve_device)
DEVICE = click.option("--device", default="auto", show_default=True,
                      help="auto (the GPU when there is one, else cpu), cpu, cuda or cuda:N.")
