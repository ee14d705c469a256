"""Request fields to engine sampling parameters, in one place."""

from sampling.params import DEFAULTS, SamplingRequest, to_sampling_params

__all__ = ["DEFAULTS", "SamplingRequest", "to_sampling_params"]
