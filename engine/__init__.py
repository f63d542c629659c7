"""coinfer engine: split, compress and encode a DNN for device-edge co-inference (Shao & Zhang 2020)."""

__version__ = "0.1.0"
