"""Load a study config (YAML), apply ``--set`` overrides, validate it and freeze it.

Nothing here imports TensorFlow: a bad config must fail in well under a second, with one
line that names the key and what is valid, before any MLflow run exists.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from study.callbacks import CALLBACKS, Callback
from study.data import DATASETS
from study.errors import ConfigError, check_name, quote
from study.inits import INITS
from study.losses import LOSSES
from study.optimizers import OPTIMIZERS, batched_refusal, check_rate
from study.schedules import SCHEDULES, Schedule
from study.user_data import is_own


class _Frozen(BaseModel):
    # extra="forbid": a typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


# Strict: YAML's true is not 1 and "1e-3" is not a number here (the loader reads 1e-3 as
# one); finite: .inf is no learning rate.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**32)]  # what NumPy and scikit-learn take
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Strict(), Field(gt=0, le=1, allow_inf_nan=False)]
Severity = Annotated[float, Strict(), Field(allow_inf_nan=False)]
# A learning rate is used in float32: 1e300 is finite here but inf there.
Rate = Annotated[PositiveFloat, AfterValidator(check_rate)]
# An optimizer's label goes into arm keys (tags, 8,000 characters in MLflow), the `optimizer`
# param (6,000) and run names; the tightest is MLflow's SQL column for run names,
# VARCHAR(250), which also holds the loss, start, seed and rate (up to about 100 more).
# MLflow would cut a longer value silently (or a SQL server refuse it mid-study).
LABEL_MAX = 100
# A study names an MLflow experiment and a folder of reports/: no separators, no leading dot
# (so never "." or ".."), short enough for any file system.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
NAME_MAX = 100
ADDRESS_PATTERN = r"auto|(ray://)?[A-Za-z0-9][A-Za-z0-9.\-]*:[0-9]{1,5}"
# Keys that say where a study runs, not what it computes: left out of the config hash, so a
# study started on one executor resumes on another.
# The growth window is an analysis choice, not a training one: changing it retrains nothing
# (the parent run records the window each report used).
WHERE_KEYS = {"executor", "ray_address", "growth_window"}


class ModelConfig(_Frozen):
    # a registered builder (study.models.MODELS) or a user's own: "package.module:function"
    kind: Literal["mlp", "cnn"] = "mlp"
    builder: str | None = None
    hidden: tuple[PositiveInt, ...] = (30,)  # Dense layers (for cnn: after the convolutions)
    activation: Literal["sigmoid", "tanh", "relu"] = "sigmoid"
    filters: tuple[PositiveInt, ...] = (8,)  # cnn: one Conv2D per entry
    kernel_size: PositiveInt = 3  # cnn
    pool: PositiveInt = 2  # cnn: max-pooling after each convolution (1: none)

    @field_validator("builder")
    @classmethod
    def _module_colon_function(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"must be 'package.module:function', got {quote(value)}")
        return value

    @model_validator(mode="after")
    def _keys_of_the_kind(self) -> ModelConfig:
        # Compared with the defaults, not with the keys given, so that a dumped config
        # (every key written out) validates again.
        changed = {name for name, field in ModelConfig.model_fields.items()
                   if getattr(self, name) != field.default}
        if self.builder is not None and changed - {"builder"}:
            raise ValueError(f"a model.builder takes no other model keys, got "
                             f"{', '.join(sorted(changed - {'builder'}))}")
        cnn_only = changed & {"filters", "kernel_size", "pool"}
        if self.builder is None and self.kind == "mlp" and cnn_only:
            raise ValueError(f"{', '.join(sorted(cnn_only))} only apply to model.kind cnn")
        return self


# A loss's name goes into params, tags, run names and the report's tables, like a built-in's.
LOSS_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_\-]{0,39}"


class CustomLoss(_Frozen):
    """A loss of the user's own: ``{name, fn: "module:attr", output, targets}``, where
    ``fn`` is a Keras loss (a function f(y_true, y_pred), a keras.losses.Loss subclass or
    instance). Imported and probed at the run's pre-flight (``study.losses.probe``)."""

    name: str
    fn: str
    output: Literal["sigmoid", "softmax", "linear"]  # the activation the loss expects
    targets: Literal["one_hot", "sparse"]  # how it expects the labels

    @field_validator("name")
    @classmethod
    def _a_new_name(cls, value: str) -> str:
        if not re.fullmatch(LOSS_NAME_PATTERN, value):
            raise ValueError(f"{quote(value)} cannot name a loss: use 1-40 letters, digits, "
                             "'_' or '-', starting with a letter or '_'")
        if value in LOSSES:
            raise ValueError(f"{quote(value)} is a built-in loss; give yours another name")
        return value

    @field_validator("fn")
    @classmethod
    def _module_colon_attribute(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:\w+", value) or len(value) > LABEL_MAX:
            raise ValueError(f"must be 'package.module:function_or_class' (at most "
                             f"{LABEL_MAX} characters), got {quote(value)}")
        return value


class OptimizerConfig(BaseModel):
    # Keras keyword arguments (momentum, beta_1, ...) sit beside name and lr; the registry
    # checks them. A list of learning rates makes lr a grid axis: the nuisance
    # hyperparameter that the analysis tunes per (loss, optimizer) on the control init.
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "sgd"
    # one rate or a list of them for every loss, or a mapping loss -> rate(s), e.g. each
    # loss at a rate chosen beforehand: {bce: 4, cce: 1, mse: 16}
    lr: tuple[Rate, ...] | dict[str, tuple[Rate, ...]]
    label: str | None = None  # the arm key's name for it; default: name and options
    # a Keras learning-rate schedule whose initial rate is the arm's lr (study.schedules)
    schedule: Schedule | None = None

    @field_validator("label")
    @classmethod
    def _fits_mlflow(cls, value: str | None) -> str | None:
        if value is not None and len(value) > LABEL_MAX:
            raise ValueError(f"{len(value):,} characters: use at most {LABEL_MAX} (it names "
                             "the optimizer in MLflow run names, which hold 250)")
        return value

    @field_validator("lr", mode="before")
    @classmethod
    def _scalar_to_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, int | float) else v for k, v in value.items()}
        return [value] if isinstance(value, int | float) else value

    def rates(self, loss: str) -> tuple[float, ...]:
        """The learning rates this optimizer runs a loss at."""
        return self.lr[loss] if isinstance(self.lr, dict) else self.lr

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_name("optimizer", value, OPTIMIZERS)

    @field_validator("schedule", mode="before")
    @classmethod
    def _known_schedule(cls, value: Any) -> Any:
        return _named("schedule", value, SCHEDULES)

    @model_validator(mode="after")
    def _options_are_elementwise(self) -> OptimizerConfig:
        OPTIMIZERS[self.name].check_options(self.options)
        for rates in self.lr.values() if isinstance(self.lr, dict) else [self.lr]:
            _unique("lr", rates)
        if self.label is None and len(self.key) > LABEL_MAX:
            raise ValueError(f"its name {quote(self.key, limit=60)} has {len(self.key)} "
                             f"characters, more than the {LABEL_MAX} MLflow run names leave "
                             "for it: give it a shorter label")
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def key(self) -> str:
        """How arms and reports name it: sgd, or sgd(momentum=0.9) when options are set."""
        if self.label:
            return self.label
        options = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted(self.options.items()))
        name = f"{self.name}({options})" if options else self.name
        return f"{name}+{self.schedule.label}" if self.schedule else name


class Scale(_Frozen):
    # inputs become (x - subtract) / divide, e.g. {subtract: 33.3, divide: 78.6} standardizes
    subtract: Annotated[float, Strict(), Field(allow_inf_nan=False)] = 0.0
    divide: PositiveFloat = 1.0


class LrBand(_Frozen):
    factor: Annotated[float, Strict(), Field(gt=1, le=16, allow_inf_nan=False)] = 2.0
    starts: Literal["worst", "all"] = "worst"


class StudyConfig(_Frozen):
    name: str
    # a built-in dataset's name, a .npz file (relative: to the config's folder; given with
    # --set: to the working directory) or a "module:function" returning the arrays
    dataset: str = "digits"
    data_seed: Seed = 0
    # Your own data only (the built-in datasets are scaled to [0, 1] already): how to scale
    # its inputs (a number divides them: 255 for bytes; or {subtract, divide}), and its
    # number of classes when the labels do not show them all (default: largest label + 1).
    scale: PositiveFloat | Scale | None = None
    classes: Annotated[int, Strict(), Field(ge=2)] | None = None
    model: ModelConfig = ModelConfig()
    # loss names: registered ones, and those of ``custom_losses``; a config writes its own
    # losses in this list as mappings, which validation moves to ``custom_losses``
    losses: tuple[str, ...]
    custom_losses: tuple[CustomLoss, ...] = ()
    # scheme name -> severities; a scheme without a severity (glorot) takes [] or null;
    # ``fixed`` takes a mapping severity label -> the weights [kernel, bias, ...].
    inits: dict[str, tuple[Severity, ...] | dict[Severity, tuple[Any, ...]]]
    seeds: tuple[Seed, ...]
    # one or more optimizers, each with its learning rates; ``optimizer:`` (one mapping) is
    # shorthand for a list of one
    optimizers: tuple[OptimizerConfig, ...]
    batch_size: PositiveInt
    epochs: PositiveInt
    target: Fraction
    # absolute: target is a val_accuracy; relative: the fraction of the way from chance
    # (1/C) to the control's plateau (the median final val_accuracy of the control arms),
    # for datasets where no fixed accuracy is both reachable and above the noise floor
    target_mode: Literal["absolute", "relative"] = "absolute"
    # val_accuracy at which a stalled arm has escaped its bad start (the escape time)
    escape: Fraction = 0.5
    # val_accuracy levels whose crossings (first step at or above) the trainers find exactly;
    # the target (absolute mode) and escape are crossed too (``crossing_levels``)
    levels: tuple[Fraction, ...] = (0.5, 0.7, 0.8, 0.9)
    # The analysis' choices, declared before the data are seen. growth_window: per init
    # family, the [lowest, highest] severity the growth law T(s) = T0 + c e^(b s) is fitted
    # over (default: every severity the study runs).
    growth_window: dict[str, tuple[Severity, Severity]] = {}
    # The learning rate as a nuisance: also run each loss at its rates / factor and x factor,
    # from the controls and each family's worst start (``starts: worst``) or from every start
    # (``all``), so the report can say whether its verdict holds across the neighbourhood.
    lr_band: LrBand | None = None
    # batched: every arm of the study in one stacked TensorFlow computation (fast);
    # reference: one plain Keras fit per arm (the ground truth the batched one is tested on).
    trainer: Literal["batched", "reference"] = "batched"
    # Keras callbacks for each arm's fit (reference trainer only; study.callbacks)
    callbacks: tuple[Callback, ...] = ()
    # The batched trainer trains arms in chunks that fit this much memory.
    memory_budget_mb: Annotated[int, Strict(), Field(ge=64)] = 2048
    # Where the arms train: local (this process) or ray (chunks of arms as Ray tasks). Values
    # are the same either way, so neither key is part of the config hash.
    executor: Literal["local", "ray"] = "local"
    # ray: a running cluster's head, host:port (or auto: the one on this machine); none
    # starts a local cluster
    ray_address: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_optimizer(cls, value: Any) -> Any:
        if isinstance(value, dict) and "optimizer" in value:
            if "optimizers" in value:
                raise ValueError("give optimizer (one) or optimizers (a list), not both")
            value = dict(value)
            value["optimizers"] = [value.pop("optimizer")]
        return value

    @model_validator(mode="before")
    @classmethod
    def _own_losses(cls, value: Any) -> Any:
        """``losses: [cce, {name: focal, fn: ...}]``: the mapping to ``custom_losses``, its
        name left in ``losses``."""
        if isinstance(value, dict) and isinstance(value.get("losses"), list | tuple):
            value = dict(value)
            own = [entry for entry in value["losses"] if isinstance(entry, dict)]
            value["custom_losses"] = [*value.get("custom_losses", ()), *own]
            # a mapping without a name is reported by custom_losses, as the missing key
            value["losses"] = [str(entry.get("name", "")) if isinstance(entry, dict)
                               else entry for entry in value["losses"]]
        return value

    @field_validator("name")
    @classmethod
    def _a_safe_folder_name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value) or len(value) > NAME_MAX:
            raise ValueError(f"{value[:40]!r}{'...' if len(value) > 40 else ''} cannot name "
                             f"a study: use 1-{NAME_MAX} letters, digits, '_', '-' or '.', "
                             "not starting with '.' (it names a folder of reports/)")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if is_own(value):
            return value
        try:
            return check_name("dataset", value, DATASETS)
        except ConfigError as err:
            raise ConfigError(f"{err}, or your own: a file.npz or 'module:function'") from None

    @model_validator(mode="after")
    def _own_data_keys(self) -> StudyConfig:
        given = [key for key in ("scale", "classes") if getattr(self, key) is not None]
        if given and not is_own(self.dataset):
            raise ValueError(f"{given[0]} only applies to your own dataset (a .npz file or "
                             f"'module:function'); {self.dataset!r} is built in, already "
                             "scaled to [0, 1]")
        return self

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one loss")
        return _unique("losses", value)

    @model_validator(mode="after")
    def _known_losses_or_own(self) -> StudyConfig:
        own = [custom.name for custom in self.custom_losses]
        _unique("losses", tuple(own))
        for name in self.losses:
            try:
                check_name("loss", name, [*LOSSES, *own])
            except ConfigError as err:  # a model validator's error has no key: name it
                raise ValueError(f"losses: {err}, or your own: {{name: ..., fn: "
                                 "'module:function', output: ..., targets: ...}") from None
        unused = set(own) - set(self.losses)
        if unused:
            raise ValueError(f"custom_losses: {sorted(unused)} not in losses")
        return self

    def loss_output(self, name: str) -> str:
        """The output activation a loss of this study needs."""
        own = {custom.name: custom.output for custom in self.custom_losses}
        return own[name] if name in own else LOSSES[name].output

    @field_validator("optimizers")
    @classmethod
    def _distinct_optimizers(cls, value: tuple[OptimizerConfig, ...]) -> tuple:
        if not value:
            raise ValueError("must list at least one optimizer")
        keys = [o.key for o in value]
        if len(set(keys)) != len(keys):
            raise ValueError(f"two optimizers are both {quote(keys, quoted=False)}: give each a "
                             "distinct label")
        return value

    @model_validator(mode="after")
    def _a_rate_for_every_loss(self) -> StudyConfig:
        for optimizer in self.optimizers:
            if isinstance(optimizer.lr, dict) and set(optimizer.lr) != set(self.losses):
                raise ValueError(f"optimizer {optimizer.key}: lr maps losses "
                                 f"{sorted(optimizer.lr)}, the study's losses are "
                                 f"{sorted(self.losses)}: give a rate for each")
        return self

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("must list at least one seed")
        return _unique("seeds", value)

    @field_validator("inits", mode="before")
    @classmethod
    def _null_severities(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ([] if v is None else v) for k, v in value.items()}
        return value

    @field_validator("inits")
    @classmethod
    def _known_inits(cls, value: dict) -> dict:
        if not value:
            raise ValueError("must name at least one init scheme")
        for name, severities in value.items():
            INITS[check_name("init scheme", name, INITS)].check_severities(severities)
            if not isinstance(severities, dict):
                _unique(f"inits.{name}", severities)
        return value

    @field_validator("levels")
    @classmethod
    def _sorted_levels(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if list(value) != sorted(set(value)):
            raise ValueError(f"must be unique and in increasing order, got {list(value)}")
        return value

    @property
    def crossing_levels(self) -> tuple[float, ...]:
        """Every val_accuracy level whose first crossing is found: ``levels``, ``escape`` and
        an absolute ``target`` (a relative one is known only once the controls have run)."""
        extra = {self.escape} | ({self.target} if self.target_mode == "absolute" else set())
        return tuple(sorted(set(self.levels) | extra))
    @model_validator(mode="after")
    def _windows_of_families(self) -> StudyConfig:
        for init, (low, high) in self.growth_window.items():
            if init not in self.inits or INITS[init].severity_meaning is None:
                families = [n for n in self.inits if INITS[n].severity_meaning is not None]
                raise ValueError(f"growth_window.{init}: not an init family of this study "
                                 f"(families: {', '.join(families) or 'none'})")
            if low > high:
                raise ValueError(f"growth_window.{init}: [{low:g}, {high:g}] is empty; give "
                                 "[lowest, highest]")
        return self

    @field_validator("callbacks", mode="before")
    @classmethod
    def _known_callbacks(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            for item in value:
                _named("callback", item, CALLBACKS)
        return value

    @field_validator("ray_address")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(ADDRESS_PATTERN, value):
            raise ValueError(f"{value[:60]!r} is not a Ray address: use host:port (the head's "
                             "GCS port, e.g. 10.0.0.5:6379), ray://host:port or auto")
        return value

    @model_validator(mode="after")
    def _address_needs_ray(self) -> StudyConfig:
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError("ray_address only applies to executor ray (--executor ray)")
        return self

    @model_validator(mode="after")
    def _the_trainer_can_run_it(self) -> StudyConfig:
        """The batched trainer runs what keeps arms apart; the reference trainer (Keras fit
        per arm) whatever Keras runs."""
        for i, optimizer in enumerate(self.optimizers):
            key = "optimizer" if len(self.optimizers) == 1 else f"optimizers.{i}"
            refusal = batched_refusal(optimizer.name, optimizer.options)
            if refusal and self.trainer == "batched":
                raise ValueError(f"{key}: {refusal}")
            plateau = [c.name for c in self.callbacks if c.name == "ReduceLROnPlateau"]
            if optimizer.schedule and plateau:
                raise ValueError(f"callbacks: ReduceLROnPlateau sets the rate that {key}."
                                 "schedule sets: use one of them")
        if self.callbacks and self.trainer == "batched":
            raise ValueError(f"callbacks: the batched trainer cannot run Keras callbacks "
                             f"({self.callbacks[0].name} acts on one arm's fit, and it trains "
                             "a group of arms as one computation); use trainer: reference")
        return self

    @model_validator(mode="after")
    def _losses_fit_the_dataset(self) -> StudyConfig:
        if self.dataset == "neuron":  # one sigmoid output with target 0: no softmax, no labels
            bad = [n for n in self.losses if self.loss_output(n) != "sigmoid"]
            if bad:
                raise ValueError(f"dataset 'neuron' has one output with target 0; losses "
                                 f"{bad} need a softmax over classes (use bce, mse, quadratic)")
        return self


def _named(kind: str, value: Any, models) -> Any:
    """A mapping whose ``name`` picks one of ``models`` (a union told apart by name): one
    line naming the valid ones when it names none of them."""
    names = [m.model_fields["name"].annotation.__args__[0] for m in models]
    if isinstance(value, dict) and value.get("name") not in names:
        given = f"unknown {kind} {quote(value['name'])}" if "name" in value else \
            f"a {kind} needs a name"
        raise ValueError(f"{given}; valid: {', '.join(names)}")
    return value


def _unique(key: str, values: tuple) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError(f"{key} has duplicates: {quote(list(values), quoted=False)}")
    return values


# ---- loading ------------------------------------------------------------------------------


# A config is a page of settings: these bounds are far above any real one (the shipped
# configs are under 4 KB, 6 levels deep and a few hundred values; 20,000 seeds given with
# --set are about 20,000 values) and keep a hostile or mistaken file from costing more than
# a second: a 1 KB alias bomb expands to billions of values, 20,000 nested brackets overflow
# Python's stack, and a 10M-item list parses for minutes.
MAX_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_VALUES = 100_000
MESSAGE_MAX = 400  # characters of an error message about a config
# libyaml (C) parses 30x faster than PyYAML's Python parser, but is stricter: it refuses
# {scaled:[2,-1]} (no space after ':'), which PyYAML and the README accept. Text libyaml
# refuses is parsed again by PyYAML when it is small enough to cost well under a second.
_FAST = getattr(yaml, "CSafeLoader", None)
SLOW_MAX_BYTES = 64_000


class _Strict:
    """YAML as people write it: 1e-3 is a number (YAML 1.1 wants 1.0e-3), and a key given
    twice is an error, not silently the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise ConfigError(f"a {type(key).__name__} cannot be a key (line "
                                  f"{key_node.start_mark.line + 1}); keys are names")
            if key in seen:
                raise ConfigError(f"key {quote(key)} appears twice (line "
                                  f"{key_node.start_mark.line + 1}); give it once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Loader(_Strict, yaml.SafeLoader):
    pass


class _FastLoader(_Strict, _FAST or yaml.SafeLoader):
    pass


for _loader in (_Loader, _FastLoader):
    _loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def _check_shape(text: str, loader) -> None:
    """Walk the YAML events (no values are built) and refuse anchors and aliases (a config
    never needs them, and they are how a small file expands to a huge one), nesting deeper
    than MAX_DEPTH and more than MAX_VALUES values."""
    depth = values = 0
    for event in _events(text, loader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError(f"line {line}: YAML anchors and aliases (&name, *name) are not "
                              "allowed in a config; write the value out")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"line {line}: nested more than {MAX_DEPTH} levels deep; "
                                  "a config needs a few")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            values += 1
            if values > MAX_VALUES:
                raise ConfigError(f"line {line}: more than {MAX_VALUES:,} values; a config "
                                  "needs far fewer")


def _events(text: str, loader):
    try:
        yield from yaml.parse(text, Loader=loader)
    except yaml.YAMLError as err:  # libyaml's own bound (1,000 levels), met before ours
        if "maximum nesting depth" in str(getattr(err, "problem", "")):
            raise ConfigError(f"line {err.problem_mark.line + 1}: nested more than "
                              f"{MAX_DEPTH} levels deep; a config needs a few") from None
        raise


def read_yaml(text: str):
    """The YAML value of ``text``, within the bounds above: ConfigError or yaml.YAMLError,
    each one line, for anything else."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{len(text):,} characters, more than the {MAX_BYTES:,} a config "
                          "may have")
    loader = _FastLoader
    try:
        _check_shape(text, loader)
    except yaml.YAMLError:
        if _FAST is None or len(text.encode()) > SLOW_MAX_BYTES:
            raise
        loader = _Loader
        _check_shape(text, loader)  # PyYAML's verdict, and its message, stand
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (SafeLoader subclasses)
    except ValueError as err:  # a number of more than 4,300 digits, which int() refuses
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(quote(str(err).split(":")[0], quoted=False)) from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line, without the snippet of the file it may quote."""
    problem = getattr(err, "problem", None) or type(err).__name__
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return quote(problem, quoted=False) + where


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, refused before it is read whole if it is too big."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path} has {size:,} bytes, more than the {MAX_BYTES:,} a config "
                          "may have (a config is a page of settings)")
    with path.open("rb") as file:
        data = file.read(MAX_BYTES + 1)  # a file that grew since: still bounded
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path} has more than the {MAX_BYTES:,} bytes a config may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None


def load_config(path: str | Path, overrides: list[str] = (),
                settings: dict[str, Any] | None = None) -> StudyConfig:
    """Read ``path``, apply ``KEY=VALUE`` overrides (dotted keys, YAML values) and then
    ``settings`` (top-level keys from command-line flags, taken as given), validate."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give a study's YAML file, e.g. "
                          "configs/default.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = read_yaml(_read_text(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") \
            from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    _resolve_dataset(raw, path.resolve().parent)
    for item in overrides:
        _apply_override(raw, item)
        if item.partition("=")[0] == "dataset":
            _resolve_dataset(raw, Path.cwd())
    raw.update(settings or {})
    return validate(raw, source=str(path))


def _resolve_dataset(raw: dict, folder: Path) -> None:
    """A relative .npz path made absolute: a path in a file is relative to that file's
    folder, one typed on the command line to the working directory."""
    value = raw.get("dataset")
    if isinstance(value, str) and value.endswith(".npz"):
        raw["dataset"] = str(folder / Path(value).expanduser())


def validate(raw: dict, source: str = "config") -> StudyConfig:
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        message = _first_error(err, raw)
        if isinstance(raw, dict) and "optimizer" in raw and "optimizers" not in raw:
            message = re.sub(r"^optimizers\.0\b", "optimizer", message)  # the user's key
        raise ConfigError(f"{source}: {message}") from None


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. epochs=2), got {quote(item)}")
    if len(key) > 200:
        raise ConfigError(f"--set {quote(key)}: not a config key (too long)")
    try:
        value = read_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {quote(text)} is not valid YAML "
                          f"({_yaml_problem(err)})") from None
    except ConfigError as err:
        raise ConfigError(f"--set {key}: {err}") from None
    *parents, leaf = _one_optimizer_spelling(raw, key).split(".")
    node = raw
    for part in parents:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]  # optimizers.1.lr
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {key}: {part} is not a mapping")
    if isinstance(node, list):
        raise ConfigError(f"--set {key}: index {leaf} is not in the list")
    node[leaf] = value


def _one_optimizer_spelling(raw: dict, key: str) -> str:
    """``optimizer`` and ``optimizers`` are two spellings of one key: an override in either
    replaces the other, and ``optimizer.lr`` reaches a list of one optimizer."""
    head = key.split(".")[0]
    if head == "optimizers" and key == head:
        raw.pop("optimizer", None)
    elif head == "optimizer":
        listed = raw.get("optimizers")
        if key == head:
            raw.pop("optimizers", None)
        elif isinstance(listed, list) and len(listed) == 1:
            return "optimizers.0" + key[len(head):]
    return key


def _first_error(err: ValidationError, raw: Any = None) -> str:
    """One line for the first problem: the dotted key, then what is wrong or valid."""
    errors = err.errors()
    # A value that fits no member of a union (lr: a list or a mapping) fails each member in
    # its own way; the deepest error is the one inside the member the value was written for.
    first = max((e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]),
                key=lambda e: len(e["loc"]))
    # pydantic names the member of a union it tried ("tuple[...]"): not a key of the user's
    key = ".".join(str(p) for p in first["loc"]
                   if not re.match(r"(tuple|dict|list|constrained-|function-|Scale$)", str(p)))
    message = first["msg"].removeprefix("Value error, ")
    if not key and re.match(r"[\w.]+: ", message):  # a check across keys names its own key
        key, message = message.split(": ", 1)
    key = _own_loss_key(raw, key or "config")
    if first["type"] == "extra_forbidden":
        message = "unknown key" + _valid_keys_hint(err, first["loc"])
    elif first["type"] == "literal_error":
        message = message.replace("Input should be", "must be one of:")
    elif first["type"].endswith("_type") or first["type"].endswith("_parsing"):
        message += f", got {quote(first['input'])}"  # e.g. true where a number belongs
    # A validator may quote the user's value whole: a net so that no message is a page long.
    return quote(f"{key}: {message}", limit=MESSAGE_MAX, quoted=False)


def _own_loss_key(raw: Any, key: str) -> str:
    """``custom_losses.N...`` as the user wrote it: ``losses.M...``, the Nth mapping in the
    config's ``losses`` list."""
    found = re.match(r"custom_losses\.(\d+)", key)
    listed = raw.get("losses") if isinstance(raw, dict) else None
    if not found or "custom_losses" in raw or not isinstance(listed, list):
        return key
    where = [i for i, entry in enumerate(listed) if isinstance(entry, dict)]
    return f"losses.{where[int(found[1])]}" + key[found.end():]


def _valid_keys_hint(err: ValidationError, loc: tuple) -> str:
    model: type[BaseModel] = StudyConfig
    if loc[:1] == ("custom_losses",):  # a list of models: the walk below needs no list
        return f"; valid keys: {', '.join(CustomLoss.model_fields)}"
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return f"; valid keys: {', '.join(model.model_fields)}"


def config_hash(config: StudyConfig, data_sha256: str | None = None) -> str:
    """A stable short hash of the validated config: same settings, same hash. For a user's
    own data, ``data_sha256`` (its content's hash, ``Splits.source_sha256``) stands for the
    dataset in place of its path: a changed file is another study, a moved one the same."""
    settings = config.model_dump(mode="json", exclude=WHERE_KEYS)
    for key in ("scale", "classes"):  # keys of user data only: built-in studies keep
        if settings[key] is None:  # the hashes they had before these keys existed
            del settings[key]
    if data_sha256 is not None:
        settings["dataset"] = {"sha256": data_sha256}
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
