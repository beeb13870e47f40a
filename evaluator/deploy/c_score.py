"""The anomaly score in C: ``vae_score.h`` / ``vae_score.c`` beside the model library, and ``score_main.c``.

API (``vae_score.h``)::

    float vae_score(const float *x);      /* the score the study kept; higher: more anomalous */
    int vae_is_anomaly(const float *x);   /* vae_score(x) > VAE_THRESHOLD */

Built on ``vae_encode``/``vae_decode`` of ``vae_model.c`` (float or integer library alike). The noise
of a sampled score is the fixed table of :func:`evaluator.anomaly.score_noise`, compiled in, so the
device gives the same score every time; the likelihood's log-density is its C form
(``search_space/likelihood.py``), summed in double. RAM beyond the model's arena:
``VAE_SCORE_RAM_BYTES`` (the decoder output, mu, logvar, z and the IWAE weights).
``./vae_score_demo [FILE]`` prints ``score is_anomaly`` for each example read.
"""

from __future__ import annotations

import numpy as np

from search_space.likelihood import get_likelihood
from search_space.spec import ArchSpec

SCORE_FILES = ("vae_score.h", "vae_score.c", "score_main.c")


def _n_out(spec: ArchSpec) -> int:
    n = 1
    for d in spec.output_shape:
        n *= d
    return n


def score_ram_bytes(spec: ArchSpec, samples: int) -> int:
    return 4 * (_n_out(spec) + 3 * spec.latent_dim + max(1, samples))


def _f(v: float) -> str:
    return f"{float(np.float32(v))!r}f"


def score_header(spec: ArchSpec, anomaly: dict) -> str:
    return f"""/* vaenas anomaly score of spec {spec.id}: {anomaly['score']} ({anomaly['meaning']}). */
#ifndef VAE_SCORE_H
#define VAE_SCORE_H

#define VAE_SCORE_KIND "{anomaly['score']}"
#define VAE_SCORE_SAMPLES {anomaly.get('samples', 0)}
#define VAE_THRESHOLD {_f(anomaly['threshold'])}   /* chosen on validation: {anomaly['rule']} */
#define VAE_SCORE_RAM_BYTES {score_ram_bytes(spec, anomaly.get('samples', 0))}

float vae_score(const float *x);    /* higher: more anomalous */
int vae_is_anomaly(const float *x); /* vae_score(x) > VAE_THRESHOLD */

#endif
"""


def _body(kind: str) -> str:
    if kind == "recon_error":
        return """    vae_encode(x, s_mu, s_lv);
    vae_decode(s_mu, s_out);
    for (i = 0; i < VAE_N_INPUT; i++) {
        float m, d;
        VAE_MEAN(s_out, i, m);
        d = m - x[i];
        acc += (double)d * d;
    }
    return (float)acc;"""
    combine = {
        "neg_elbo": "    return (float)(-acc / VAE_SCORE_SAMPLES + kl);",
        "recon_prob": "    return (float)(-acc / VAE_SCORE_SAMPLES);",
        "iwae": """    for (k = 0, mx = s_lw[0]; k < VAE_SCORE_SAMPLES; k++)
        mx = s_lw[k] > mx ? s_lw[k] : mx;
    for (k = 0, acc = 0.0; k < VAE_SCORE_SAMPLES; k++)
        acc += exp(s_lw[k] - mx);
    return (float)(-(mx + log(acc / VAE_SCORE_SAMPLES)));""",
    }[kind]
    return f"""    vae_encode(x, s_mu, s_lv);
    for (j = 0; j < VAE_LATENT; j++)
        kl += -0.5 * (1.0 + s_lv[j] - (double)s_mu[j] * s_mu[j] - exp(s_lv[j]));
    for (k = 0; k < VAE_SCORE_SAMPLES; k++) {{
        double lp = 0.0, lpz = 0.0, lqz = 0.0;
        for (j = 0; j < VAE_LATENT; j++) {{
            s_z[j] = s_mu[j] + expf(0.5f * s_lv[j]) * vae_eps[k][j];
            lpz += -0.5 * ((double)s_z[j] * s_z[j] + LOG_2PI);
            lqz += -0.5 * ((double)vae_eps[k][j] * vae_eps[k][j] + LOG_2PI + s_lv[j]);
        }}
        vae_decode(s_z, s_out);
        lp = vae_log_prob(s_out, x);
        acc += lp;
        s_lw[k] = lp + lpz - lqz;
    }}
{combine}"""


def score_source(spec: ArchSpec, anomaly: dict, eps: np.ndarray | None) -> str:
    lik = get_likelihood(spec.likelihood)
    k = anomaly.get("samples", 0)
    table = ""
    if k:
        rows = ",\n".join("    {" + ", ".join(_f(v) for v in row) + "}" for row in eps)
        table = f"/* the fixed noise table (seed {anomaly['noise_seed']}): z_k = mu + exp(logvar / 2) * eps[k] */\n" \
                f"static const float vae_eps[VAE_SCORE_SAMPLES][VAE_LATENT] = {{\n{rows}\n}};\n"
    mean = lik.c_mean.replace("o[i]", "(o)[(i)]").replace("m =", "(m) =")
    return f"""/* vaenas anomaly score: {anomaly['score']}, {anomaly['meaning']}.
   Likelihood {spec.likelihood}; threshold {anomaly['threshold']!r} ({anomaly['rule']}). */
#include <math.h>
#include <string.h>

#include "vae_model.h"
#include "vae_score.h"

#define LOG_2PI 1.8378770664093453
#define VAE_MEAN(o, i, m) do {{ {mean} }} while (0)

{table}static float s_mu[VAE_LATENT], s_lv[VAE_LATENT], s_z[VAE_LATENT], s_out[VAE_N_OUTPUT];
static double s_lw[VAE_SCORE_SAMPLES > 0 ? VAE_SCORE_SAMPLES : 1];

static float vae_softplus(float v)
{{
    return (v > 0.0f ? v : 0.0f) + log1pf(expf(-fabsf(v)));
}}

/* log p(x | decoder output o), summed over the data's values */
static double vae_log_prob(const float *o, const float *x)
{{
    const int n = VAE_N_INPUT;
    double acc = 0.0;
    int i;
    for (i = 0; i < n; i++) {{
        float lp;
        {lik.c_log_prob}
        acc += lp;
    }}
    return acc;
}}

float vae_score(const float *x)
{{
    double acc = 0.0, kl = 0.0, mx = 0.0;
    int i, j, k;
    (void)i; (void)j; (void)k; (void)mx; (void)kl; (void)s_z; (void)s_lw; (void)vae_log_prob;
{_body(anomaly['score'])}
}}

int vae_is_anomaly(const float *x)
{{
    return vae_score(x) > VAE_THRESHOLD;
}}
"""


SCORE_MAIN_C = r"""/* ./vae_score_demo [FILE]: reads examples (VAE_N_INPUT floats each), prints "score is_anomaly" per example. */
#include <stdio.h>

#include "vae_model.h"
#include "vae_score.h"

static float x[VAE_N_INPUT];

int main(int argc, char **argv)
{
    FILE *f = argc > 1 ? fopen(argv[1], "r") : stdin;
    int i, got;
    if (!f) {
        fprintf(stderr, "vae_score_demo: cannot open %s\n", argv[1]);
        return 2;
    }
    for (;;) {
        for (i = 0, got = 1; i < VAE_N_INPUT && got == 1; i++)
            got = fscanf(f, "%f", &x[i]);
        if (got != 1) {
            if (i > 1) {
                fprintf(stderr, "vae_score_demo: input ended inside an example (%d floats each)\n", VAE_N_INPUT);
                return 2;
            }
            return 0;
        }
        printf("%.9g %d\n", (double)vae_score(x), vae_is_anomaly(x));
    }
}
"""


def score_makefile(base: str) -> str:
    """The model's Makefile with the score demo added (``make`` builds both)."""
    return base.replace("vae_demo: main.c", "all: vae_demo vae_score_demo\n\nvae_demo: main.c", 1) + """
vae_score_demo: score_main.c vae_score.c vae_model.c vae_model.h vae_score.h
\t$(CC) $(CFLAGS) -o $@ score_main.c vae_score.c vae_model.c -lm
"""


def write_c_score(spec: ArchSpec, packed: bytes, anomaly: dict, eps: np.ndarray | None, out) -> list[str]:
    from .c_lib import MAKEFILE

    (out / "vae_score.h").write_text(score_header(spec, anomaly))
    (out / "vae_score.c").write_text(score_source(spec, anomaly, eps))
    (out / "score_main.c").write_text(SCORE_MAIN_C)
    mk = score_makefile(MAKEFILE).replace("\trm -f vae_demo vae_model.o", "\trm -f vae_demo vae_score_demo vae_model.o")
    (out / "Makefile").write_text(mk)
    return list(SCORE_FILES)
