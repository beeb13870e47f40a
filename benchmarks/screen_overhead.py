"""What screening costs per trial: :meth:`strategies.screening.Screen.choose` (fit the ridge on the finished
trials, predict a pool of 16, score their hypervolume gain) on the `mnist` preset's space with 100 finished
trials (random specs with made-up −ELBO and latency: the cost does not depend on the values).

    python benchmarks/screen_overhead.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from strategies.screening import Screen, ScreenConfig  # noqa: E402
from strategies.trial_record import Observation  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.trials import exact_costs  # noqa: E402


def main() -> int:
    cfg = StudyConfig.from_dict(yaml.safe_load((ROOT / "studies/presets/mnist.yaml").read_text()))
    space = cfg.space.bind_data((1, 28, 28), "bernoulli")
    rng = random.Random(0)
    specs: dict[str, object] = {}
    while len(specs) < 116:
        s = space.sample(rng)
        specs.setdefault(s.id, s)
    specs = list(specs.values())
    history = [Observation(i, s, (100 + 50 * rng.random(), exact_costs(s)["size_bytes"], rng.random()))
               for i, s in enumerate(specs[:100])]
    screen = Screen(ScreenConfig(), space, cfg.objectives, cfg.bounds, exact_costs)
    pool = specs[100:]
    screen.choose(pool, history)  # warm: static costs are cached per spec, as in a study
    t = time.perf_counter()
    for _ in range(5):
        screen.choose(pool, history)
    print(f"Screen.choose with 100 finished trials and a pool of 16: {(time.perf_counter() - t) / 5 * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
