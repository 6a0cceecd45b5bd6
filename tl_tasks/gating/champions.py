"""Champions you can deploy: each promotion is published under `$TL_HOME/champions/<variant>/<lineage>/`.

    champions/<variant>/<lineage[:16]>/
        current -> versions/<run_key>          (a symlink, swapped atomically on each promotion)
        versions/<run_key> -> .<run_key>.v-<id>  (files.publish_dir: a new model for the run swaps in whole)
        versions/<run_key>/model.keras         (the evaluated model, byte for byte)
                           predictions.npy     (its per-image predictions on the lineage's test set)
                           serving/            (TF SavedModel, endpoint `serve`, loads with plain TensorFlow;
                                                written when the version is first deployed: `ensure_serving`)
                           champion.json       (run id, lineage, accuracy + interval, sha256s, temperature, date,
                                                load_requires: the custom layers model.keras holds)
                           model_card.md       (tl_tasks.gating.model_card: written once the gate's decision is stored)

Earlier champions stay in `versions/` as history. A lineage is one test set, so a run on other data never
replaces another lineage's champion. Keras loads lazily (only to write the serving export). The export costs
~10 CPU-s for a ResNet50, so it is paid by the champions that get deployed, not by every promotion.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from tl_tasks import config, layout
from tl_tasks.files import publish_dir, replace_symlink, sha256_file, write_json_atomic
from tl_tasks.gating.decision import PROMOTING
from tl_tasks.gating.model_card import MODEL_CARD_FILE
from tl_tasks.store import connect
from tl_tasks.training.runtime import import_keras_quietly
from tl_tasks.variants import get_variant

log = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"
MODEL_FILE = layout.MODEL_FILE
SERVING_DIR = "serving"
CURRENT = "current"
VERSIONS = "versions"
# Deployment fact, not a hyperparameter: `0` skips the TF SavedModel export at deployment (e.g. a Keras-on-JAX
# worker without TensorFlow); champion.json then says why there is no serving export.
SERVING_EXPORT_ENV = "TL_SERVING_EXPORT"
# Deployment fact: the lineage (a test-set fingerprint prefix) that deployment and MLflow's `champion` follow.
DEPLOY_LINEAGE_ENV = "TL_DEPLOY_LINEAGE"
# Where the custom layers a model.keras may hold (`tl_tasks>RandomAugment`) are registered with Keras.
CUSTOM_LAYERS_MODULE = "tl_tasks.training.augment"
# champion.json's `serving` until the version is deployed
SERVING_ON_DEPLOY = {"format": None, "reason": "written when this version is deployed (champions.deploy, run by "
                                               "the deploy_champion DAG)"}


class ChampionError(RuntimeError):
    """A champion could not be published or does not match what the metrics database recorded."""


def champions_root() -> Path:
    return layout.champions_root()


def lineage_dir(variant: str, lineage: str) -> Path:
    return champions_root() / variant / lineage[:16]


def publish(run: dict, result: dict, decision: dict) -> Path:
    """Write an evaluated, promoted model's version folder (atomically); returns it. `make_current` then points
    the lineage's `current` at it, once the metrics database confirms it is the champion. Its `serving/` export
    is written when it is deployed (`ensure_serving`).

    Args:
        run: the run dict (run_id, lineage, data_source, profile, ...).
        result: the variant's result dict (model_path, model_sha256, predictions_path, accuracy, ...).
        decision: the gate decision that promoted it (accuracy_ci, forced, reason, ...).

    Raises:
        ChampionError: the model file is missing or differs from the one that was evaluated.
    """
    variant, lineage = result["variant"], run.get("lineage")
    if not lineage:
        raise ChampionError(f"run {run['run_id']!r} has no lineage (test-set fingerprint): prepare it again")
    model = Path(result.get("model_path") or "")
    if not model.is_file():
        raise ChampionError(f"cannot publish {variant} of run {run['run_id']}: model file {model} is missing; "
                            "re-run its train and evaluate tasks")
    model_sha = sha256_file(model)
    if result.get("model_sha256") and model_sha != result["model_sha256"]:
        raise ChampionError(f"cannot publish {variant} of run {run['run_id']}: {model} changed since it was "
                            f"evaluated (sha256 {model_sha[:12]}..., evaluated {result['model_sha256'][:12]}...); "
                            "re-run its evaluate task")
    versions = lineage_dir(variant, lineage) / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / config.run_key(run["run_id"])
    if _intact(final, model_sha):  # the gate ran again for this run: the same model is already published
        return final
    # a version that was deployed (it has serving/) and is replaced by a retrained model keeps a serving export:
    # `deployed/<variant>` may point at it
    try:
        exported = bool((read_champion(final).get("serving") or {}).get("format")) and _export_enabled()
    except (OSError, ValueError):
        exported = False

    def build(tmp: Path) -> None:
        shutil.copy2(model, tmp / MODEL_FILE)
        if result.get("predictions_path") and Path(result["predictions_path"]).is_file():
            shutil.copy2(result["predictions_path"], tmp / Path(result["predictions_path"]).name)
        write_json_atomic(tmp / CHAMPION_FILE, {
            "variant": variant, "run_id": run["run_id"], "lineage": lineage, "data_source": run.get("data_source"),
            "profile": run.get("profile"), "class_names": run.get("class_names"),
            "accuracy": result.get("accuracy"), "accuracy_ci": decision.get("accuracy_ci"),
            "test_images": (result.get("eval_info") or {}).get("test_images"),
            "decision": decision.get("decision"), "forced": bool(decision.get("forced")),
            "reason": decision.get("reason"), "model_file": MODEL_FILE, "model_sha256": model_sha,
            "predictions_sha256": result.get("predictions_sha256"),
            "serving": _export_serving(tmp / MODEL_FILE, tmp / SERVING_DIR) if exported else SERVING_ON_DEPLOY,
            # softmax(log(p) / temperature) is the calibrated probability (fitted on the validation split)
            "temperature": result.get("temperature"), "ece": result.get("ece"),
            "ece_scaled": result.get("ece_scaled"), "robust_accuracy": result.get("robust_accuracy"),
            "model_card": MODEL_CARD_FILE, "load_requires": load_requires(tmp / MODEL_FILE),
            "versions": run.get("versions"), "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })

    # a different model for the same run (it was retrained) is replaced whole, in one rename
    publish_dir(final, build)
    log.info("published %s of run %s (lineage %s): %s", variant, run["run_id"], lineage[:12], final)
    return final


def load_requires(model_path: Path) -> dict:
    """What `keras.models.load_model` needs besides Keras to load `model_path`: this package's custom layers
    (read from the file's config.json, no Keras needed) and the module that registers them. `serving/` needs none."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            config_text = archive.read("config.json").decode()
    except (zipfile.BadZipFile, KeyError):  # not a Keras 3 archive (an older format): nothing to read it from
        return {"custom_layers": None, "import": [], "note": "not a Keras 3 archive: its needs are not recorded"}
    layers = sorted(set(re.findall(r'"registered_name":\s*"(tl_tasks>[^"]+)"', config_text)))
    return {"custom_layers": layers, "import": [CUSTOM_LAYERS_MODULE] if layers else [],
            "note": (f"import {CUSTOM_LAYERS_MODULE} (pip install this package) before keras.models.load_model; "
                     f"{SERVING_DIR}/ loads with plain TensorFlow") if layers else "plain Keras loads it"}


def make_current(folder: Path) -> Path:
    """Point the lineage's `current` at a published version folder (one rename); returns the link."""
    folder = Path(folder)
    home = folder.parent.parent
    _point_current(home, folder)
    return home / CURRENT


def _intact(folder: Path, model_sha: str) -> bool:
    try:
        return read_champion(folder).get("model_sha256") == model_sha == sha256_file(folder / MODEL_FILE)
    except (OSError, ValueError):
        return False


def read_champion(path: Path) -> dict:
    """champion.json of a published version folder (or of a lineage's `current`)."""
    return json.loads((Path(path) / CHAMPION_FILE).read_text())


def verify(entry: dict, *, current: bool = False) -> list[str]:
    """Problems with a published champion, compared with what the database recorded; [] when it is intact.

    `entry`: a row of `champion_history` (variant, run_id, lineage, model_sha256, published). `current`: it is
    the database's current champion, so the lineage's `current` link must point at it too.
    """
    where = entry.get("published")
    if not where:
        return ["never published (promoted before champions were published; a new promotion publishes it)"]
    folder = Path(where)
    model = folder / MODEL_FILE
    if not model.is_file():
        return [f"model file {model} is missing"]
    problems = []
    actual = sha256_file(model)
    expected = entry.get("model_sha256")
    if expected and actual != expected:
        problems.append(f"{model} has sha256 {actual[:12]}... but the evaluated model had {expected[:12]}...")
    try:
        meta = read_champion(folder)
    except (OSError, ValueError) as exc:
        problems.append(f"{folder / CHAMPION_FILE} is unreadable: {exc}")
    else:
        if meta.get("model_sha256") != actual:
            problems.append(f"{model} does not match the sha256 in {CHAMPION_FILE}")
        if meta.get("run_id") != entry.get("run_id"):
            problems.append(f"{folder} holds run {meta.get('run_id')!r}, expected {entry.get('run_id')!r}")
    link = folder.parent.parent / CURRENT
    if current and (not link.exists() or link.resolve() != folder.resolve()):
        problems.append(f"{link} does not point at this champion; rerun the gate of run {entry.get('run_id')} "
                        "to publish it again")
    return problems


def current_dir(variant: str, lineage: str) -> Path:
    return lineage_dir(variant, lineage) / CURRENT


def _point_current(home: Path, target: Path) -> None:
    """Swap the `current` symlink to `target` in one rename (readers see the old or the new, never none)."""
    replace_symlink(home / CURRENT, os.path.relpath(target, home))


def ensure_serving(version: Path) -> dict:
    """The published `version`'s TF SavedModel (`serving/`), exported now when it has none: the version is
    published again, whole, with it added (files.publish_dir: readers see the old or the new folder), its files
    hard-linked rather than copied. Returns champion.json's `serving` entry. `$TL_SERVING_EXPORT=0` leaves the
    version as it is and says why in the returned entry."""
    version = Path(version)
    source = version.resolve()
    meta = read_champion(source)  # the files and champion.json of one and the same folder
    if (meta.get("serving") or {}).get("format"):
        return meta["serving"]
    if not _export_enabled():
        return {"format": None, "reason": f"{SERVING_EXPORT_ENV}=0: no serving export"}
    written = {}

    def build(tmp: Path) -> None:
        for item in source.iterdir():
            if item.name in (CHAMPION_FILE, SERVING_DIR) or item.is_dir():
                continue
            try:
                os.link(item, tmp / item.name)
            except OSError:  # a filesystem without hard links
                shutil.copy2(item, tmp / item.name)
        written.update(_export_serving(tmp / MODEL_FILE, tmp / SERVING_DIR))
        write_json_atomic(tmp / CHAMPION_FILE, {**meta, "serving": written})

    publish_dir(version, build)
    log.info("exported %s of run %s for serving: %s", meta.get("variant"), meta.get("run_id"), version / SERVING_DIR)
    return written


def _export_enabled() -> bool:
    return os.environ.get(SERVING_EXPORT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _export_serving(model_path: Path, out: Path) -> dict:
    import_keras_quietly()
    import keras

    if keras.backend.backend() != "tensorflow":
        try:
            import tensorflow  # noqa: F401  (jax2tf needs it)
        except ImportError:
            return {"format": None, "reason": f"Keras runs on {keras.backend.backend()} without TensorFlow installed: "
                                              "no SavedModel export (model.keras is published)"}
    import tl_tasks.training.augment  # noqa: F401  (registers the augmentation layer the model may hold: CUSTOM_LAYERS_MODULE)

    model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    # Not `model.export(...)`: its endpoint calls the model without `training`, and Keras's augmentation
    # layers (RandomFlip, ...) default to training=True, so the served model would flip its inputs.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda x: model(x, training=False),
                         input_signature=[keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="uint8")])
    archive.write_out(str(out), verbose=False)
    return {"format": "tf_saved_model", "path": SERVING_DIR, "endpoint": "serve",
            "input": {"dtype": "uint8", "shape": [None, *model.input_shape[1:]]},
            "output": "class probabilities (softmax), in champion.json's order of the lineage's class names"}


def deploy(published: str | Path, variant: str, *, target_root: Path | None = None,
           lineage: str | None = None) -> dict:
    """The example deployment: verify a published champion and point `$TL_HOME/deployed/<variant>` at it.

    A serving system reads `deployed/<variant>/serving/` (or `model.keras`), exported here on a version's first
    deployment (`ensure_serving`); the swap is one rename. The folder
    must be a champion of `variant` under `$TL_HOME/champions/`, intact, and recorded as a promotion in the
    metrics database. Only one lineage is deployed: `lineage` (a prefix of the test-set fingerprint), else the
    lineage already deployed, else the first non-smoke one; champions of other test sets are skipped.

    Returns:
        `{"variant", "deployed": path or None, "lineage", "skipped": reason or None}`.

    Raises:
        ChampionError: the folder is not a published champion of `variant`, or does not match the database.
    """
    variant = get_variant(variant).name
    folder = Path(published).resolve()
    root_of_variant = (champions_root() / variant).resolve()
    if not folder.is_relative_to(root_of_variant) or not (folder / CHAMPION_FILE).is_file():
        raise ChampionError(f"{published} is not a published champion of {variant} (under {root_of_variant}); "
                            "check the asset event")
    meta = read_champion(folder)
    if meta.get("variant") != variant:
        raise ChampionError(f"{folder} holds a champion of {meta.get('variant')!r}, not of {variant!r}")
    recorded = _recorded_promotion(variant, meta.get("run_id"))
    problems = verify({"published": str(folder), "run_id": meta.get("run_id"),
                       "model_sha256": (recorded or {}).get("model_sha256") or meta.get("model_sha256")})
    if recorded is None:
        problems.append(f"run {meta.get('run_id')!r} has no promotion of {variant} in the metrics database")
    if problems:
        raise ChampionError(f"refusing to deploy {folder}: " + "; ".join(problems))
    root = Path(target_root) if target_root else layout.deployed_root()
    link = root / variant
    wanted = lineage or deployed_lineage(variant, target_root=root)
    out = {"variant": variant, "lineage": meta["lineage"], "deployed": None,
           "skipped": off_deployed_lineage(meta, wanted)}
    if out["skipped"]:
        log.warning("not deploying %s: %s", variant, out["skipped"])
        return out
    root.mkdir(parents=True, exist_ok=True)
    # the version's own name (versions/<run>, from the verified champion.json, whatever path the event named),
    # not the hidden folder it links to (files.publish_dir): a version published again replaces that folder,
    # and the deployed link keeps working
    version = lineage_dir(variant, meta["lineage"]) / VERSIONS / config.run_key(meta["run_id"])
    if version.resolve() != folder:
        raise ChampionError(f"refusing to deploy {folder}: it is not the published version {version} of run "
                            f"{meta['run_id']!r}; deploy that folder")
    try:
        ensure_serving(version)
    except Exception as exc:  # the export loads Keras and writes a SavedModel: any failure refuses this one deploy
        raise ChampionError(f"could not export {version} for serving ({type(exc).__name__}: {exc}); the version "
                            "is unchanged, fix the cause and deploy it again") from exc
    _point_current_named(root, variant, version)
    out["deployed"] = str(link)
    return out


def deploy_events(triggering_asset_events, *, lineage: str | None = None) -> list[dict]:
    """The deploy DAG's task: `deploy` each champion announced by the triggering asset events (newest last).

    Every event is tried; a refused one does not stop the others, and the task fails at the end naming them.
    """
    out, refused, seen = [], [], set()
    for events in (triggering_asset_events or {}).values():
        for event in events:
            # Airflow lists an event that came through an alias (the gate emits through one) under the asset
            # and under the alias: the same object twice, deployed once
            if id(event) in seen:
                continue
            seen.add(id(event))
            extra = dict(getattr(event, "extra", None) or {})
            try:
                out.append(deploy(extra.get("published") or "", extra.get("variant") or "", lineage=lineage))
            except (ChampionError, ValueError) as exc:
                refused.append(f"{extra.get('variant')!r} of run {extra.get('run_id')!r}: {exc}")
    if refused:
        raise ChampionError("refused to deploy " + "; ".join(refused))
    return out


def _recorded_promotion(variant: str, run_id: str | None) -> dict | None:
    with connect() as store:
        result = store.get_result(run_id, variant) if run_id else None
    gate = (result or {}).get("gate") or {}
    return result if result and result.get("state") == "success" and gate.get("decision") in PROMOTING \
        else None


def deployed_lineage(variant: str, *, target_root: Path | None = None) -> str | None:
    """The lineage of the champion deployed at `deployed/<variant>`, None when none is."""
    link = (Path(target_root) if target_root else layout.deployed_root()) / variant
    try:
        return read_champion(link).get("lineage") if link.exists() else None
    except (OSError, ValueError):
        return None


def off_deployed_lineage(champion: dict, wanted: str | None) -> str | None:
    """Why the champion (`run_id`, `lineage`, `profile`) is not on the lineage deployment follows, else None.

    `wanted`: TL_DEPLOY_LINEAGE, else the lineage already followed; with neither, any non-smoke champion is."""
    lineage = champion.get("lineage") or ""
    if wanted is None and champion.get("profile") == "smoke":
        return (f"champion of run {champion.get('run_id')} comes from a smoke run; set {DEPLOY_LINEAGE_ENV}="
                f"{lineage[:12]} to deploy its lineage")
    if wanted is not None and not lineage.startswith(wanted):
        return (f"champion of run {champion.get('run_id')} is on another test set (lineage {lineage[:12]}) "
                f"than the deployed one ({wanted[:12]}); set {DEPLOY_LINEAGE_ENV} to switch lineages")
    return None


def _point_current_named(home: Path, name: str, target: Path) -> None:
    replace_symlink(home / name, Path(target).absolute())
