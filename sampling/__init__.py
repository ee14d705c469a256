"""Request fields to engine sampling parameters, in one place."""

from sampling.params import DEFAULTS, to_sampling_params

__all__ = ["DEFAULTS", "to_sampling_params"]
