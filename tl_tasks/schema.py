"""The one list of run parameters, and everything generated from it.

Each `Param` entry says a parameter's name, type, bounds or choices, title, help, trigger-form section and the
`Settings` field it sets (None for gate and run options, which are not part of the training recipe). From the
list come:

- `dag_params()`: the DAG's trigger form (`{name: airflow.sdk.Param}`; Airflow is imported only there);
- `add_cli_options(parser, ...)`: the command line's options (`--image-size` for `image_size`);
- `check(name, value)`: type and bound checks with errors naming the value and the fix (`BadInput`);
- `settings_from_params(params)`: trigger params or CLI values into a validated `config.Settings`;
- `validate(settings)`: every field of a Settings plus the cross-field rules (one place).

A parameter that sets a Settings field defaults to the chosen profile's value (`config.PROFILES`); its help text
quotes each profile's real default. Resolution order: trigger form or command-line option > profile. The
environment does not change a run's settings (see `REMOVED_ENV`).

Adding a parameter: one entry in `PARAMS` (plus the `Settings` field and its profile values when it is a
setting), and its use. Light: no heavy imports; importing this module does not import Airflow.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from tl_tasks.config import (
    DEFAULT_ALPHA,
    DEFAULT_CLASS_GATE,
    DEFAULT_CLASS_TOLERANCE,
    DEFAULT_PROFILE,
    DEFAULT_TOLERANCE,
    PROFILE_NAMES,
    PROFILES,
    Settings,
)
from tl_tasks.errors import BadInput
from tl_tasks.variants import VARIANT_NAMES, VARIANTS, get_variant

DATA, GATE, RUN = "Data and training", "Gate", "Run"
SECTIONS = (DATA, GATE, RUN)
TYPES = ("string", "integer", "number", "boolean", "list")


@dataclass(frozen=True)
class Param:
    """One run parameter. `default` None (with `field` set) means: the profile's value."""

    name: str
    type: str                               # one of TYPES ("list": a list of `choices`)
    title: str
    help: str
    section: str                            # one of SECTIONS
    field: str | None = None                # the Settings field it sets (None: a gate or run option)
    default: Any = None
    choices: tuple | None = None
    choice_titles: dict | None = None       # form labels of the choices
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    all_value: int | None = None            # this value means "no limit" (None in Settings)
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def from_profile(self) -> bool:
        """True when an empty value means the profile's (a Settings field without a fixed default)."""
        return self.field is not None and self.default is None


PARAMS: tuple[Param, ...] = (
    Param("profile", "string", "Profile", "Defaults for every setting below.", DATA, field="profile",
          choices=PROFILE_NAMES, metavar="PROFILE",
          choice_titles={"smoke": "smoke: synthetic data, 1 epoch (tests, seconds)",
                         "quick": "quick: real data (256 images per ResNet50), few epochs, 32 px (CPU laptop, minutes)",
                         "full": "full: all of CIFAR-10, 224 px ResNet50 (GPU worker)"}),
    Param("dataset", "string", "Dataset",
          "cifar10 (a local copy when one is found: Keras's cache, then the data roots; else Keras's download), "
          "cifar10:<path to cifar-10-python.tar.gz>, folder:<dir, .tar.gz or .zip with train/<class>/*>, "
          "or synthetic.", DATA, field="dataset", metavar="SOURCE"),
    Param("variants", "list", "Variants",
          "Models to train; each trains as its own task, in parallel up to the gpu pool's slots.", DATA,
          field="variants", default=list(VARIANT_NAMES), choices=VARIANT_NAMES, metavar="V1,V2",
          choice_titles={v.name: f"{v.name}: {v.description}" for v in VARIANTS.values()}),
    Param("epochs", "integer", "Epochs", "Epochs for every variant (early stopping may end a variant sooner).",
          DATA, field="epochs", minimum=1, maximum=1000, metavar="N"),
    Param("image_size", "integer", "ResNet50 image size",
          "Pixels the ResNet50 variants resize to, on the accelerator (32 to 224; ImageNet weights need at "
          "least 32). The CNN always uses the data's 32 px.", DATA, field="image_size", minimum=8, maximum=512,
          metavar="PX"),
    Param("batch_size", "integer", "Batch size", "Images per training step.", DATA, field="batch_size",
          minimum=1, maximum=4096, metavar="N"),
    Param("limit_per_class", "integer", "Images per class",
          "At most this many training images per class; 0 = all images.", DATA, field="limit_per_class",
          minimum=2, all_value=0, metavar="N"),
    Param("weights", "string", "ResNet50 weights",
          "imagenet, none (random init), auto (ImageNet when obtainable, else none with a warning) or a path "
          "to a local .h5/.keras file.", DATA, field="weights", metavar="W"),
    Param("seed", "integer", "Seed", "Seeds the data split, weight init and shuffling.", DATA, field="seed",
          minimum=0, maximum=2**32 - 1, metavar="N"),
    Param("tolerance", "number", "Regression tolerance",
          f"Practical margin (absolute: {DEFAULT_TOLERANCE} = {DEFAULT_TOLERANCE * 100:g} points): a variant "
          "regressed only when the whole confidence interval of its paired accuracy change against its champion "
          "lies below -tolerance.", GATE, default=DEFAULT_TOLERANCE, minimum=0, maximum=1, exclusive_maximum=True,
          metavar="T"),
    Param("alpha", "number", "Significance level",
          "Alpha of the exact McNemar test on the images where the new model and the champion disagree: "
          "promoted only when significantly better (p < alpha). Intervals are 1 - alpha.", GATE,
          default=DEFAULT_ALPHA, minimum=0, maximum=0.5, exclusive_minimum=True, exclusive_maximum=True,
          metavar="A"),
    Param("class_gate", "boolean", "Per-class gate",
          "Block a promotion when any class is significantly worse than with the champion (exact McNemar on that "
          "class's images, Holm-adjusted across classes) and its paired interval lies below -class_tolerance; "
          "the reason names the class.", GATE, default=DEFAULT_CLASS_GATE),
    Param("class_tolerance", "number", "Per-class tolerance",
          f"Practical margin of the per-class gate (absolute recall drop within a class: {DEFAULT_CLASS_TOLERANCE} "
          f"= {DEFAULT_CLASS_TOLERANCE * 100:g} points).", GATE, default=DEFAULT_CLASS_TOLERANCE, minimum=0,
          maximum=1, exclusive_maximum=True, metavar="T"),
    Param("fail_on_regression", "boolean", "Fail on regression",
          "Fail the run (its last task, finalize) when a variant regressed, so Airflow alerts; promotions of the "
          "other variants are still published and announced.", GATE, default=False),
    Param("force_promote", "boolean", "Force promote",
          "Promote every successfully evaluated model, even one that did not beat its champion.", GATE,
          default=False),
    Param("force", "boolean", "Force retraining",
          "Train even when the data, the settings and the code equal the last successful run's (otherwise such "
          "a run is recorded as skipped: unchanged, and trains nothing).", RUN, default=False),
    Param("mixed_precision", "string", "Mixed precision",
          "auto (float16 compute when a GPU is visible), on or off; the output layer stays float32.", RUN,
          field="mixed_precision", choices=("auto", "on", "off"), metavar="MODE"),
    Param("data_parallel", "boolean", "Data parallel",
          "Train one variant across all of the worker's GPUs (Keras DataParallel on JAX, MirroredStrategy on "
          "TensorFlow) instead of one device per task.", RUN, field="data_parallel"),
    Param("eval_batch_size", "integer", "Evaluation batch size",
          "Images per inference step of the evaluation and of a frozen base's feature pass: speed and memory, "
          "not accuracy.", RUN, field="eval_batch_size", minimum=1, maximum=4096, metavar="N"),
    Param("robustness_images", "integer", "Corruption-suite images",
          "Test images (a stratified subset) scored under the 18 corruptions of the robustness check, at "
          "evaluation only; 0 = off. At most 10,000 (CIFAR-10's test set): the 18 copies are held in memory.",
          RUN, field="robustness_images", minimum=0, maximum=10_000, metavar="N"),
)

# Environment variables that used to override settings; a run refuses to start while one is set.
REMOVED_ENV = {
    "TL_PROFILE": "profile", "TL_DATASET": "dataset", "TL_RESNET_WEIGHTS": "weights", "TL_EPOCHS": "epochs",
    "TL_IMAGE_SIZE": "image_size", "TL_BATCH_SIZE": "batch_size", "TL_LIMIT_PER_CLASS": "limit_per_class",
    "TL_SEED": "seed", "TL_MIXED_PRECISION": "mixed_precision", "TL_DATA_PARALLEL": "data_parallel",
}


def by_name() -> dict[str, Param]:
    return {p.name: p for p in PARAMS}


def get(name: str) -> Param:
    params = by_name()
    if name not in params:
        raise BadInput(f"unknown parameter {name!r}; valid: {', '.join(params)}")
    return params[name]


# ------------------------------------------------------------------------------------- help texts

def profile_values(p: Param) -> dict[str, Any]:
    """Each profile's value of the setting `p` (empty for a gate or run option)."""
    if p.field is None or p.field == "profile":
        return {}
    return {name: getattr(PROFILES[name], p.field) for name in PROFILE_NAMES}


def _show(p: Param, value) -> str:
    if value is None:
        return "all" if p.all_value is not None else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(p, v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "all" if tuple(value) == tuple(VARIANT_NAMES) else ",".join(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def default_text(p: Param) -> str:
    """Where the value comes from when none is given, e.g. 'Empty: the profile's (smoke: 32, quick: 64, full: 64).'"""
    if p.name == "profile":
        return f"Empty: {DEFAULT_PROFILE}."
    if p.from_profile:
        values = profile_values(p)
        return "Empty: the profile's (" + ", ".join(f"{n}: {_show(p, v)}" for n, v in values.items()) + ")."
    return f"Default: {_show(p, p.default)}."


def help_text(p: Param) -> str:
    return f"{p.help} {default_text(p)}"


# ------------------------------------------------------------------------------------------ checks

def check(name: str, value):
    """`value` of parameter `name` if valid (None = not given); BadInput naming the value and the fix otherwise."""
    p = get(name)
    if value is None:
        return None
    where = f"{name}={value!r}"
    if p.type == "boolean":
        if not isinstance(value, bool):
            raise BadInput(f"{where} is not true or false; give {p.flag} or leave it out")
        return value
    if p.type == "string" and (not isinstance(value, str) or not value.strip()):
        raise BadInput(f"{where} is empty or not text; {p.help}")
    if p.type == "list":
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise BadInput(f"{where} must be a non-empty list; choose from {', '.join(p.choices)}")
        bad = [v for v in value if v not in p.choices]
        if bad:
            raise BadInput(f"{where}: {', '.join(map(repr, bad))} not known; choose from {', '.join(p.choices)}")
        if len(set(value)) != len(value):
            raise BadInput(f"{where} names a variant twice; give each once")
        return list(value)
    if p.type in ("integer", "number"):
        kind = int if p.type == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BadInput(f"{where} is not a {'whole number' if p.type == 'integer' else 'number'}; "
                           f"{_bounds(p)}")
        if p.all_value is not None and value == p.all_value:
            return value
        low_ok = p.minimum is None or (value > p.minimum if p.exclusive_minimum else value >= p.minimum)
        high_ok = p.maximum is None or (value < p.maximum if p.exclusive_maximum else value <= p.maximum)
        if not (low_ok and high_ok):
            raise BadInput(f"{where} is out of range; {_bounds(p)}")
    if p.choices is not None and value not in p.choices:
        raise BadInput(f"{where} is not one of {', '.join(p.choices)}")
    return value


def check_val_fraction(value) -> float:
    """The validation share of train (not a form parameter: the profiles set it); BadInput unless 0 < value < 0.5."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 0.5:
        raise BadInput(f"val_fraction={value!r} must be a number between 0 and 0.5 (0.1 = 10% of train)")
    return value


def _number(x) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _bounds(p: Param) -> str:
    parts = []
    if p.minimum is not None:
        parts.append(f"{'>' if p.exclusive_minimum else '>='} {_number(p.minimum)}")
    if p.maximum is not None:
        parts.append(f"{'<' if p.exclusive_maximum else '<='} {_number(p.maximum)}")
    text = f"give a value {' and '.join(parts)}" if parts else "give a number"
    return text + (f" (or {p.all_value} for all)" if p.all_value is not None else "")


def refuse_removed_env(environ=None) -> None:
    """BadInput naming a set `REMOVED_ENV` variable and what replaces it (the environment no longer sets a run)."""
    environ = os.environ if environ is None else environ
    found = [env for env in REMOVED_ENV if environ.get(env, "") != ""]
    if found:
        fixes = "; ".join(f"{env} -> the trigger form's '{get(REMOVED_ENV[env]).title}' field or "
                          f"{get(REMOVED_ENV[env]).flag}" for env in found)
        raise BadInput(f"{', '.join(found)} set in this process's environment, but the environment no longer "
                       f"changes a run's settings (a worker's environment would silently change runs triggered "
                       f"from the UI); unset {'it' if len(found) == 1 else 'them'} and use instead: {fixes}")


# ---------------------------------------------------------------------------------------- settings

def settings_from_params(params: dict | None = None, base: Settings | None = None) -> Settings:
    """The Settings of a run from trigger params or CLI values (None or absent = the profile's value).

    Starts from `params["profile"]`'s defaults, else from `base` (e.g. the settings a run was prepared with),
    else from the default profile. Gate and run options are checked but set nothing here.
    """
    refuse_removed_env()
    params = dict(params or {})
    known = by_name()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise BadInput(f"unknown parameter(s) {unknown}; valid: {', '.join(known)}")
    values = {name: check(name, value) for name, value in params.items()}
    profile = values.get("profile")
    start = PROFILES[profile] if profile else (base or PROFILES[DEFAULT_PROFILE])
    overrides = {}
    for name, value in values.items():
        p = known[name]
        if value is None or p.field is None or p.field == "profile":
            continue
        overrides[p.field] = None if (p.all_value is not None and value == p.all_value) else value
    return apply_overrides(start, overrides)


def resolve_settings(profile: str | None = None, **overrides) -> Settings:
    """The Settings of a run: `profile`'s defaults (default "quick") with `overrides` (Settings field names)
    on top; overrides whose value is None are ignored. `epochs` may be an int (all families) or a dict per
    family; `variants` a list of names. Trigger params and CLI values go through
    `settings_from_params` instead (which also knows that limit_per_class 0 means all images).
    """
    refuse_removed_env()
    name = profile or DEFAULT_PROFILE
    if name not in PROFILES:
        raise BadInput(f"profile={name!r} is not a known profile; choose one of {', '.join(PROFILE_NAMES)}")
    return apply_overrides(PROFILES[name], {k: v for k, v in overrides.items() if v is not None})


def apply_overrides(base: Settings, values: dict) -> Settings:
    """`base` with `values` (Settings field names; None is a value here) applied, validated (`validate`)."""
    values = dict(values)
    unknown = set(values) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise BadInput(f"unknown setting(s) {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(Settings)]}")
    if "epochs" in values and isinstance(values["epochs"], int) and not isinstance(values["epochs"], bool):
        values["epochs"] = dict.fromkeys(base.epochs, values["epochs"])
    if values.get("batch_size") is not None and "gpu_batch_size" not in values:
        values["gpu_batch_size"] = None  # an explicit batch size holds on every device
    if "variants" in values:
        values["variants"] = tuple(get_variant(v).name for v in values["variants"])
        if not values["variants"]:
            raise BadInput("variants is empty; choose at least one of " + ", ".join(VARIANT_NAMES))
    settings = dataclasses.replace(base, **values)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Every field of `s` in its bounds, and the rules that tie fields together; BadInput naming the fix."""
    for p in PARAMS:
        if p.field is None or p.field == "profile":
            continue
        value = getattr(s, p.field)
        if p.name == "epochs":
            for family, n in value.items():
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise BadInput(f"epochs={n!r} for {family} must be a whole number >= 1")
        elif value is None and p.all_value is not None:
            continue
        elif p.type == "list":
            check(p.name, list(value))
        else:
            check(p.name, value)
    if s.image_size < 32 and s.weights != "none":
        raise BadInput(f"image_size={s.image_size!r} is too small for ResNet50 with weights={s.weights!r}; "
                       "use 32 or more, or weights=none")
    check_val_fraction(s.val_fraction)
    if s.gpu_batch_size is not None and (isinstance(s.gpu_batch_size, bool) or not isinstance(s.gpu_batch_size, int)
                                         or not 1 <= s.gpu_batch_size <= 4096):
        raise BadInput(f"gpu_batch_size={s.gpu_batch_size!r} must be a whole number from 1 to 4096, or None "
                       "(= batch_size)")
    for family, n in s.val_limit.items():
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise BadInput(f"val_limit={n!r} for {family} must be a whole number >= 1, or None for all images")
    if s.head_warmup_epochs < 0:
        raise BadInput(f"head_warmup_epochs={s.head_warmup_epochs!r} must be >= 0 (0 = no head warm-up)")


# --------------------------------------------------------------------------------- the trigger form

def dag_params() -> dict:
    """The DAG's trigger form: `{name: airflow.sdk.Param}`, one per entry of `PARAMS`, in order."""
    from airflow.sdk import Param as AirflowParam

    return {p.name: AirflowParam(form_default(p), **json_schema(p)) for p in PARAMS}


def form_default(p: Param):
    """The value the trigger form starts with: the default profile for `profile` (so the form shows what a run
    will use, not an empty field); every other parameter's own default. The command line keeps None for
    `--profile`: there an empty value means the profile the run was prepared with."""
    return DEFAULT_PROFILE if p.name == "profile" else p.default


def json_schema(p: Param) -> dict:
    """The JSON-schema keywords (plus Airflow's title, description, section, values_display) of `p`."""
    nullable = form_default(p) is None
    kind = {"list": "array"}.get(p.type, p.type)
    description = help_text(p) if nullable or p.default is not None else f"{p.help} Default: {form_default(p)}."
    out: dict = {"type": ["null", kind] if nullable else kind, "title": p.title, "description": description,
                 "section": p.section}
    if p.type == "list":
        out.update(items={"type": "string", "enum": list(p.choices)}, minItems=1, uniqueItems=True)
    elif p.choices is not None:
        out["enum"] = ([None] if nullable else []) + list(p.choices)
    if p.choice_titles:
        out["values_display"] = dict(p.choice_titles)
    if p.type == "string":
        out["minLength"] = 1
    if p.minimum is not None:
        if p.all_value is not None:  # all_value below the minimum is allowed too; values between are not
            out["minimum"] = p.all_value
            out["not"] = {"enum": list(range(p.all_value + 1, int(p.minimum)))}
        else:
            out["exclusiveMinimum" if p.exclusive_minimum else "minimum"] = p.minimum
    if p.maximum is not None:
        out["exclusiveMaximum" if p.exclusive_maximum else "maximum"] = p.maximum
    return out


# ----------------------------------------------------------------------------------- the command line

def add_cli_options(parser: argparse.ArgumentParser, *, settings: bool = True, variants: bool = True,
                    gate: bool = False, run: bool = False) -> None:
    """Add the options of `PARAMS` to a subcommand: `settings` (the Settings fields; `variants` among them),
    `gate` (the gate's options) and `run` (options of a whole run, e.g. --force)."""
    groups = {}
    for p in PARAMS:
        if p.field:
            wanted = settings and (variants or p.name != "variants")
        else:
            wanted = gate if p.section == GATE else run
        if not wanted:
            continue
        key = "settings" if p.field else p.section
        if key not in groups:
            title = {"settings": "settings (default: the profile's, or what the run was prepared with)",
                     GATE: "gate", RUN: "run"}[key]
            groups[key] = parser.add_argument_group(title)
        _add_option(groups[key], p)


def _add_option(group, p: Param) -> None:
    help_ = help_text(p).replace("%", "%%")
    if p.type == "boolean":
        if p.default is False:
            group.add_argument(p.flag, dest=p.name, action="store_true", help=help_)
        else:
            group.add_argument(p.flag, dest=p.name, action=argparse.BooleanOptionalAction, default=p.default,
                               help=help_)
        return
    group.add_argument(p.flag, dest=p.name, type=_cli_type(p), default=p.default if p.field is None else None,
                       metavar=p.metavar, help=help_)


def _cli_type(p: Param):
    def parse(text: str):
        try:
            return check(p.name, _from_text(p, text))
        except BadInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = p.name  # argparse names the type in its error messages
    return parse


def _from_text(p: Param, text: str):
    text = text.strip()
    if p.type == "list":
        return [v.strip() for v in text.split(",") if v.strip()]
    if p.all_value is not None and text.lower() in ("all", "none"):
        return p.all_value
    if p.type == "integer":
        try:
            return int(text)
        except ValueError:
            raise BadInput(f"{p.name}={text!r} is not a whole number; {_bounds(p)}") from None
    if p.type == "number":
        try:
            return float(text)
        except ValueError:
            raise BadInput(f"{p.name}={text!r} is not a number; {_bounds(p)}") from None
    return text


def values_from_args(args: argparse.Namespace) -> dict:
    """The parameters given on the command line (options left out are absent, so the profile's apply)."""
    return {p.name: getattr(args, p.name) for p in PARAMS if getattr(args, p.name, None) is not None}

