"""What can be built: the arch spec, the search space, the VAE builder, quantised layers, packing.

Pure: imports nothing else of vaenas.
"""

from .builder import VAE, build_vae, unpack_model
from .likelihood import LIKELIHOODS, Likelihood, get_likelihood
from .errors import SpaceError, SpecError, VaenasInputError
from .packing import LayerLayout, pack_model, packed_layout, packed_size_bytes, unpack_state_dict
from .quant import (
    QUANT_LAYERS,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    dequantize_weight,
    fake_quant_act,
    fake_quant_weight,
    pack_bits,
    set_fake_quant,
    quantize_weight,
    unpack_bits,
)
from .space import SearchSpace, Verdict
from .spec import ALLOWED_BITS, ArchSpec

__all__ = [
    "ALLOWED_BITS", "ArchSpec", "LIKELIHOODS", "Likelihood", "get_likelihood", "LayerLayout", "QUANT_LAYERS", "QuantConv2d", "QuantConvTranspose2d",
    "QuantLinear", "SearchSpace", "SpaceError", "SpecError", "VAE", "VaenasInputError", "Verdict",
    "build_vae", "dequantize_weight", "fake_quant_act", "fake_quant_weight", "pack_bits", "pack_model", "packed_layout",
    "packed_size_bytes", "quantize_weight", "set_fake_quant", "unpack_bits", "unpack_model", "unpack_state_dict",
]
