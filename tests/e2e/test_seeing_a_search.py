"""Seeing a search end to end: trial artifacts, optuna-dashboard, the HTML report in a real headless
browser, and a newcomer's frictions (export names, show, hints, --help, mean bits)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from studies.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seen(tmp_path_factory, data_root):
    """A finished 6-trial study (mixed bit-widths, so the front has several colours)."""
    d = tmp_path_factory.mktemp("see")
    cfg = {"name": "see", "dataset": "mnist", "data_root": str(data_root), "n_train": 500,
           "space": {"latent_dim": [4, 8], "mlp": {"depth": [1], "width": [16, 32, 64]}, "weight_bits": [2, 4, 8, 32]},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "budget": {"trials": 6}, "train": {"epochs": 1, "batch_size": 100}, "latency": {"repeats": 3, "warmup": 1}}
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", str(d / "c.yaml"), "--runs-dir", str(d / "runs"), "--quiet"]) == 0
    return d


def _study(seen):
    return optuna.load_study(study_name="see", storage=f"sqlite:///{seen / 'runs' / 'see' / 'study.db'}")


def test_every_trained_trial_has_its_files_as_optuna_artifacts(seen):
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    from studies.artifacts import resolve, trial_artifacts

    study = _study(seen)
    assert study.user_attrs["artifact_store"] == {"backend": "filesystem", "in_study_folder": "artifacts"}
    store = FileSystemArtifactStore(resolve(study.user_attrs["artifact_store"], seen / "runs" / "see")["path"])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "reused_from_trial" not in t.user_attrs]
    assert done
    for t in done:
        arts = {a["filename"]: a for a in trial_artifacts(study, t.number)}
        assert set(arts) == {"arch.json", "model.pt", "samples.png"}
        assert arts["samples.png"]["mimetype"] == "image/png" and arts["arch.json"]["mimetype"] == "application/json"
        tdir = seen / "runs" / "see" / "trials" / str(t.number)
        for name, a in arts.items():
            got = seen / f"dl-{t.number}-{name}"
            download_artifact(artifact_store=store, file_path=str(got), artifact_id=a["artifact_id"])
            assert got.read_bytes() == (tdir / name).read_bytes()
        assert json.loads((tdir / "arch.json").read_text())["type"] == "vaenas.ArchSpec"
        from PIL import Image

        im = Image.open(tdir / "samples.png")  # 3 rows (inputs, reconstructions, samples) of 8 images
        assert im.size == (8 * 29 + 1, 3 * 29 + 1)


def test_artifacts_false_stores_none(tmp_path, data_root):
    cfg = {"name": "noart", "dataset": "mnist", "data_root": str(data_root), "n_train": 300, "artifacts": False,
           "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [8]}},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "budget": {"trials": 1}, "train": {"epochs": 1}, "latency": {"repeats": 3, "warmup": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    assert not (tmp_path / "runs" / "noart" / "artifacts").exists()
    assert (tmp_path / "runs" / "noart" / "trials" / "0" / "model.pt").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_with_its_artifacts(seen):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is in the test extra")
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "studies.cli", "dashboard", "see", "--runs-dir", str(seen / "runs"),
                          "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        study = _study(seen)
        base = f"http://127.0.0.1:{port}"
        detail = None
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"{base}/api/studies/{study._study_id}", timeout=5) as r:
                    detail = json.load(r)
                break
            except OSError:
                if p.poll() is not None:
                    pytest.fail(f"the dashboard stopped: {p.communicate()}")
                time.sleep(0.2)
        assert detail is not None, "the dashboard never answered"
        trial = next(t for t in detail["trials"] if t["state"] == "Complete" and t["artifacts"])
        names = {a["filename"]: a for a in trial["artifacts"]}
        assert {"arch.json", "model.pt", "samples.png"} <= set(names)
        a = names["arch.json"]
        with urllib.request.urlopen(f"{base}/artifacts/{study._study_id}/{trial['trial_id']}/{a['artifact_id']}") as r:
            body = r.read()
        assert body == (seen / "runs" / "see" / "trials" / str(trial["number"]) / "arch.json").read_bytes()
    finally:
        p.terminate()
        p.wait(timeout=30)


def _chromium() -> str | None:
    return next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def _browser(tmp_path) -> tuple[str, list[str]]:
    """Headless chromium and its flags; the test skips without it (naming the package), and fails under CI."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("no chromium here: install Debian's chromium to run the browser check")
    return browser, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmp_path}/prof"]


def _dom(page: Path, tmp_path) -> str:
    """The page's DOM after its script ran in headless chromium."""
    browser, flags = _browser(tmp_path)
    return subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120).stdout


def test_html_report_renders_in_a_headless_browser(seen, tmp_path):
    """The report is one self-contained file (nothing fetched) whose script draws the front: one SVG
    circle per complete trial, the front's points marked; a screenshot is kept for a person."""
    assert main(["report", "see", "--runs-dir", str(seen / "runs")]) == 0
    page = seen / "runs" / "see" / "report.html"
    text = page.read_text()
    assert "src=\"http" not in text and "href=\"http" not in text and "@import" not in text  # offline
    browser, flags = _browser(tmp_path)
    dom = _dom(page, tmp_path)
    study = _study(seen)
    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert 'data-rendered="yes"' in dom  # the script ran to its end
    assert dom.count('class="pt') == n_complete
    n_front = dom.count('class="pt front"')
    assert n_front >= 1
    assert dom.count('class="hv"') == 2  # hypervolume over trials and over wall time
    import re

    assert len(re.findall(r'<tr data-row="\d+">', dom)) == len(study.trials)  # every trial in the table
    shot = Path(os.environ.get("VAENAS_SCREENSHOT_DIR", tmp_path)) / "report.png"
    subprocess.run([browser, *flags, "--window-size=1300,2200", "--virtual-time-budget=5000", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_is_named_after_the_pick_and_hints_can_be_pasted(seen, capsys):
    runs = str(seen / "runs")
    assert main(["export", "see", "--runs-dir", runs, "--pick", "knee", "--force"]) == 0
    assert main(["export", "see", "--runs-dir", runs, "--pick", "best:size_bytes"]) == 0
    out = capsys.readouterr().out
    exp = seen / "runs" / "see" / "export"
    assert (exp / "knee.json").is_file() and (exp / "best_size_bytes.json").is_file()
    assert not list(exp.glob("trial*.json"))
    # a console script run by its path (the README's .venv/bin/vaenas, not on PATH) is quoted as typed
    script = Path(sys.executable).parent / "vaenas"
    if script.is_file():
        env = {**os.environ, "PATH": "/usr/bin:/bin"}
        r = subprocess.run([str(script), "export", "see", "--runs-dir", runs, "--trial", "0"], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert f"retrain it: {script} retrain" in r.stdout
        assert (exp / "trial0.json").is_file()
    assert "retrain it: vaenas retrain" in out  # called in-process: the documented name


def test_show_prints_the_front_with_its_header_and_all_trials_on_request(seen, capsys):
    runs = str(seen / "runs")
    assert main(["show", "see", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    study = _study(seen)
    n = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert f"of {n} complete trials" in out and "show --all" in out
    assert main(["show", "see", "--runs-dir", runs, "--all"]) == 0
    out = capsys.readouterr().out
    assert f"all {n} complete trials" in out
    body = out.split("complete trials (on_front", 1)[1].splitlines()[2:]
    assert len(body) == n
    t = study.best_trials[0]
    assert f"{t.user_attrs['neg_elbo']:.2f}" in out  # nats to 2 decimals, not 4 significant digits


def test_help_shows_defaults(capsys):
    for cmd in ("train", "retrain"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "(default: 100)" in out and "(default: 0.001)" in out and "(default: 0)" in out


def test_mean_bits_is_weighted_by_parameters():
    import dataclasses

    from search_space import ArchSpec, packed_layout

    spec = ArchSpec.mlp((400, 400), 20)
    bits = [2] * len(spec.weight_bits)
    bits[-1] = 32  # the 400x784 output layer at 32 bits, the rest at 2
    s = dataclasses.replace(spec, weight_bits=tuple(bits))
    layers = packed_layout(s)
    want = sum(x.n_weights * x.bits for x in layers) / sum(x.n_weights for x in layers)
    assert s.mean_bits == pytest.approx(want) and s.layer_mean_bits == pytest.approx(sum(bits) / len(bits))
    # by hand: 784x400, 400x400, 400x40 (head), 20x400, 400x400, 400x784 (out, 32 bits): 971,200 weights
    assert s.mean_bits == pytest.approx((313_600 * 32 + (971_200 - 313_600) * 2) / 971_200)  # 11.69; plain mean 7.0
    from studies.plots import bits_colour

    assert len({bits_colour(b) for b in (2, 3, 4, 6, 8)}) == 5  # the usual widths get colours of their own


HOSTILE = "</script><!--<script>\"'<img src=x onerror=\"document.title='PWNED'\">\x1b[31m"


def test_hostile_text_in_a_study_runs_no_script_and_the_report_still_draws(seen, tmp_path):
    """Every text a study holds that the report shows - a --runs-dir name (in the storage URL), a fail
    reason, a worker - is escaped in the HTML and in the embedded JSON, under a Content-Security-Policy
    that runs no inline handler; an objective name that is not one is refused in one line."""
    import shutil

    runs = tmp_path / "r</script><!--<script>\"'x"
    shutil.copytree(seen / "runs" / "see", runs / "see", ignore=shutil.ignore_patterns("report.html"))
    study = optuna.load_study(study_name="see", storage=f"sqlite:///{runs / 'see' / 'study.db'}")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"fail_reason": HOSTILE, "worker": HOSTILE}))
    assert main(["report", "see", "--runs-dir", str(runs)]) == 0
    page = runs / "see" / "report.html"
    text = page.read_text()
    assert "Content-Security-Policy" in text and "onerror=" not in text.split("</head>")[0]
    data = text.split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data  # nothing in the JSON can end or comment out its block
    dom = _dom(page, tmp_path)
    assert 'data-rendered="yes"' in dom and dom.count('class="hv"') == 2 and dom.count('class="pt') >= 1
    assert "PWNED" not in dom.split("<body", 1)[0]  # the title was never rewritten
    assert "<img src=\"x\"" not in dom and "<img src=x" not in dom  # the payload is text in the table
    assert "&lt;img src=x onerror=" in dom


def test_a_stored_objective_that_is_not_one_is_one_line(seen, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(seen / "runs" / "see", runs / "see", ignore=shutil.ignore_patterns("report.html"))
    study = optuna.load_study(study_name="see", storage=f"sqlite:///{runs / 'see' / 'study.db'}")
    study.set_user_attr("objectives", ["neg_elbo", HOSTILE])
    assert main(["report", "see", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are not objectives of this vaenas" in err[0] and "\x1b" not in err[0]
    assert not (runs / "see" / "report.html").exists()


@pytest.mark.parametrize("lo,hi", [(0.02, 0.7), (0.03, 0.09), (900, 2e6), (5e3, 9e5)])
def test_log_axis_tick_labels_never_print_over_each_other(lo, hi, tmp_path):
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from studies.plots import log_axis

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(np.geomspace(lo, hi, 20), np.linspace(90, 140, 20))
    log_axis(ax.xaxis)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    labels = [t for t in ax.xaxis.get_ticklabels(minor=False) + ax.xaxis.get_ticklabels(minor=True)
              if t.get_text() and t.get_visible() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    boxes = sorted((b.x0, b.x1) for b in (t.get_window_extent(r) for t in labels))
    assert len(boxes) >= 2, [t.get_text() for t in labels]
    assert all(a[1] <= b[0] for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]
    assert all("10^" not in t.get_text() and "times" not in t.get_text() for t in labels)
    plt.close(fig)


def test_html_report_axes_tick_at_round_numbers(seen, tmp_path):
    """The report's axes tick at round numbers - multiples of 1, 2 or 5 times a power of ten, two significant
    digits at most (was 27,975 / 74,248)."""
    import re

    assert main(["report", "see", "--runs-dir", str(seen / "runs"), "--out", str(tmp_path / "r.html")]) == 0
    dom = _dom(tmp_path / "r.html", tmp_path)
    def nice(v: float) -> bool:  # 1, 2 or 5 times a power of ten
        return v > 0 and f"{v:.6e}"[0] in "125" and set(f"{v:.6e}".split("e")[0][2:]) <= {"0"}

    groups = 0
    for svg in re.findall(r"<svg[^>]*>(.*?)</svg>", dom, flags=re.S):
        for anchor in ("middle", "end"):  # x-axis ticks, y-axis ticks
            vals = [float(t.replace(",", "")) for t in re.findall(
                rf'<text [^>]*text-anchor="{anchor}" font-size="10"[^>]*>([^<]*)</text>', svg)]
            if len(vals) < 2:
                continue
            groups += 1
            steps = {round(b - a, 9) for a, b in zip(vals, vals[1:])}
            even = len(steps) == 1 and nice(steps.pop())  # a linear axis: one round step
            assert even or all(nice(v) for v in vals), vals  # or a log axis at 1, 2, 5 x 10^k
    assert groups >= 4


@pytest.mark.parametrize("artifacts", ["gone", "emptied"])
def test_export_of_a_trial_without_weights_is_one_line_and_creates_nothing(seen, tmp_path, capsys, artifacts):
    """Its model.pt and its artifact gone (or the whole artifact folder): one line, exit 2 - no folder
    created where the study once kept its artifacts, no ArtifactNotFound."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(seen / "runs" / "see", runs / "see")
    for f in (runs / "see" / "trials").glob("*/model.pt"):
        f.unlink()
    art = runs / "see" / "artifacts"
    shutil.rmtree(art)
    if artifacts == "emptied":
        art.mkdir()
    assert main(["export", "see", "--runs-dir", str(runs), "--trial", "0", "--format", "c"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no weights found" in err[0], err
    assert art.exists() == (artifacts == "emptied") and not (runs / "see" / "export" / "trial0").exists()
