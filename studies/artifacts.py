"""Every finished trial's files as Optuna artifacts - the one owner of where they go.

A trained trial leaves ``runs/<study>/trials/<n>/`` with ``model.pt`` (the checkpoint),
``arch.json`` (its spec) and ``samples.png`` (validation inputs, reconstructions and prior samples);
a supernet estimate leaves nothing (its spec is a trial attribute). Each file is uploaded with
``optuna.artifacts.upload_artifact`` to the study's artifact store, so optuna-dashboard lists and
shows them per trial (``vaenas dashboard STUDY``). The store is chosen by the config's
``artifacts:`` - absent: a filesystem store in ``runs/<study>/artifacts``; a folder; ``false``: none;
``{backend: boto3, bucket: NAME}`` (S3) or ``{backend: gcs, bucket: NAME}`` for workers on several
machines - and recorded in the study (``artifact_store``), so the dashboard and report find it.

A study folder is self-contained and relocatable: the default store is recorded as "the study
folder's ``artifacts/``" and found wherever the study is now (:func:`resolve`; so is the absolute
path older studies recorded); every process writes where its own config says (:func:`describe`),
never where a stored attribute points, and a reader never creates a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search_space import VaenasInputError

_BACKENDS = {"filesystem", "boto3", "gcs"}
_MIME = {".png": "image/png", ".json": "application/json"}  # model.pt: application/octet-stream
IN_STUDY_FOLDER = {"backend": "filesystem", "in_study_folder": "artifacts"}  # the default, wherever the study is


def check_artifacts_config(value: Any) -> Any:
    """The ``artifacts:`` value, checked (one line naming what is wrong)."""
    if value is None or value is False or isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        extra = set(value) - {"backend", "bucket", "path"}
        backend = value.get("backend", "filesystem")
        if extra or backend not in _BACKENDS:
            raise VaenasInputError(f"artifacts: expected false, a folder, or {{backend: filesystem|boto3|gcs, "
                                   f"bucket: NAME | path: DIR}}, got {value!r}")
        if backend != "filesystem" and not isinstance(value.get("bucket"), str):
            raise VaenasInputError(f"artifacts: backend {backend} needs bucket: NAME")
        if backend == "filesystem" and not isinstance(value.get("path"), str):
            raise VaenasInputError("artifacts: backend filesystem needs path: DIR")
        return value
    raise VaenasInputError(f"artifacts: expected false, a folder, or {{backend: ..., bucket: ...}}, got {value!r}")


def describe(value: Any, sdir: Path) -> dict | None:
    """Where a study's artifacts go, as stored in the study: {"backend": ..., "path"|"bucket": ...}."""
    if value is False:
        return None
    if value is None:
        return dict(IN_STUDY_FOLDER)
    if isinstance(value, str):
        return {"backend": "filesystem", "path": str(Path(value).resolve())}
    d = dict(value)
    if d.get("backend", "filesystem") == "filesystem":
        return {"backend": "filesystem", "path": str(Path(d["path"]).resolve())}
    return {"backend": d["backend"], "bucket": d["bucket"]}


def resolve(desc: dict | None, sdir: Path) -> dict | None:
    """A stored description made concrete for the study folder ``sdir`` as it is now: the default store is
    ``sdir/artifacts`` - also for a study that recorded its default as an absolute path (``.../<study>/
    artifacts``) and was copied or moved since."""
    if desc is None:
        return None
    if desc.get("in_study_folder"):
        return {"backend": "filesystem", "path": str((Path(sdir) / desc["in_study_folder"]).resolve())}
    path = desc.get("path")
    if desc.get("backend", "filesystem") == "filesystem" and path and Path(path).name == "artifacts" \
            and Path(path).parent.name == Path(sdir).name:
        return {"backend": "filesystem", "path": str((Path(sdir) / "artifacts").resolve())}
    return desc


def open_store(desc: dict | None, create: bool = True):
    """The Optuna artifact store a description names (None: artifacts are off)."""
    if desc is None:
        return None
    from optuna.artifacts import FileSystemArtifactStore

    backend = desc.get("backend", "filesystem")
    if backend == "filesystem":
        path = Path(desc["path"])
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise VaenasInputError(f"artifacts: the study's artifact folder {str(path)!r} does not exist")
        return FileSystemArtifactStore(str(path))
    try:
        if backend == "boto3":
            from optuna.artifacts import Boto3ArtifactStore

            return Boto3ArtifactStore(desc["bucket"])
        from optuna.artifacts import GCSArtifactStore

        return GCSArtifactStore(desc["bucket"])
    except ImportError as e:
        raise VaenasInputError(f"artifacts: backend {backend} needs its client library ({e}); install it, or set "
                               "artifacts: to a folder") from None


def store_for(study, config_value: Any, sdir: Path):
    """This process's artifact store: where its own config says (the default: the study folder as it is
    now), never where a stored attribute points; the first process records it for the readers."""
    desc = describe(config_value, sdir)
    if "artifact_store" not in study.user_attrs:
        study.set_user_attr("artifact_store", desc)
    return open_store(resolve(desc, sdir))


def upload(store, trial, paths: list[Path]) -> list[str]:
    """Upload each file as an artifact of the (still running) trial; returns their artifact ids."""
    if store is None:
        return []
    from optuna.artifacts import upload_artifact

    ids = []
    for p in paths:
        mime = _MIME.get(p.suffix, "application/octet-stream")
        ids.append(upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=trial, mimetype=mime))
    return ids


def trial_artifacts(study, trial_number: int) -> list[dict]:
    """The artifacts of a finished trial: [{"artifact_id", "filename", "mimetype"}]."""
    from optuna.artifacts import get_all_artifact_meta

    from strategies import optuna_private

    t = study.trials[trial_number]
    return [{"artifact_id": m.artifact_id, "filename": m.filename, "mimetype": m.mimetype}
            for m in get_all_artifact_meta(t, storage=optuna_private.storage_of(study))]
