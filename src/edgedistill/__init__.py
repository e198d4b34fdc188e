"""edgedistill: distil a large vision(-language) teacher into a small, fast student for the edge.

The package follows the pipeline, one module per step:

    data -> teachers -> cache -> heads -> (module, train) -> evaluate -> experiments
                                                   -> export -> bench -> predict
"""

__version__ = "0.1.0"
