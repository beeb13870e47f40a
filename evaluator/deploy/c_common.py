"""What every C export shares: the packed array's hex rows and ``vae_model.h`` (float and integer libraries)."""

from __future__ import annotations

from search_space.spec import ArchSpec

from .memory import arena_floats, ram_bytes


def _hex_rows(data: bytes, per_row: int = 16) -> str:
    return "\n".join("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + per_row]) + ","
                     for i in range(0, len(data), per_row)) or "    0x00,"


def header_source(spec: ArchSpec, packed: bytes) -> str:
    n_out = 1
    for d in spec.output_shape:
        n_out *= d
    guard = "VAE_MODEL_H"
    return f"""/* vaenas export of spec {spec.id}. Inputs are in model space (see manifest.json: normalisation). */
#ifndef {guard}
#define {guard}

#include <stdint.h>

#define VAE_SPEC_ID "{spec.id}"
#define VAE_N_INPUT {spec.n_inputs}        /* input shape {list(spec.input_shape)} */
#define VAE_LATENT {spec.latent_dim}
#define VAE_N_OUTPUT {n_out}       /* decoder output shape {list(spec.output_shape)}: the {spec.likelihood} likelihood's parameters */
#define VAE_PACKED_BYTES {len(packed)}
#define VAE_ARENA_FLOATS {arena_floats(spec)}
#define VAE_RAM_BYTES {ram_bytes(spec)}

extern const uint8_t vae_packed[VAE_PACKED_BYTES];

void vae_encode(const float *x, float *mu, float *logvar);
void vae_decode(const float *z, float *out);
void vae_reconstruct(const float *x, float *out); /* decode(mu) */

#endif
"""
