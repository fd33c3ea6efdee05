"""Models: a registry of Keras builders. Every loss of a study trains the same architecture;
only the parameter-free output activation that a loss spec requires differs.

A builder is called as ``builder(input_shape, n_classes, output_activation)`` and returns a
Keras model: ``mlp`` and ``cnn`` here, or a user's own through ``model.builder:
"package.module:function"``. The batched trainer calls the model's own ``stateless_call``
on stacked weights, so for it a model must be a pure function of its trainable weights: no
non-trainable state (BatchNormalization's moving statistics) and no random layers (Dropout).
The reference trainer (one Keras fit per arm) runs any model Keras runs.

A model's last layer must apply ``output_activation`` (checked, not added: see
``_check_output_activation``); ``study.plugins`` imports a user's builder.

A builder is the user's code, run like a plugin: whatever it raises at import or when called,
``sys.exit`` included (Ctrl-C excepted), is bad input, reported in one plain line.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from study.errors import ConfigError
from study.plugins import import_object, one_line


def build_mlp(config, input_shape: tuple[int, ...], n_classes: int, output: str):
    """Dense layers of ``config.hidden`` units with ``config.activation``, then Dense(C,
    ``output``); an image input is flattened first."""
    import keras

    layers = [keras.Input(input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(n, activation=config.activation) for n in config.hidden]
    layers.append(keras.layers.Dense(n_classes, activation=output))
    return keras.Sequential(layers)


def build_cnn(config, input_shape: tuple[int, ...], n_classes: int, output: str):
    """For images (H, W): Conv2D(f, kernel_size, same padding, ``activation``) then
    MaxPooling(pool) for each f of ``config.filters``, then the Dense layers of
    ``config.hidden`` and Dense(C, ``output``)."""
    import keras

    if len(input_shape) != 2:
        raise ConfigError(f"model.kind: cnn needs an image dataset (digits, mnist, "
                          f"fashion_mnist); this one has inputs of shape {input_shape}")
    layers = [keras.Input(input_shape), keras.layers.Reshape((*input_shape, 1))]
    for filters in config.filters:
        layers.append(keras.layers.Conv2D(filters, config.kernel_size, padding="same",
                                          activation=config.activation))
        if config.pool > 1:
            layers.append(keras.layers.MaxPooling2D(config.pool))
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(n, activation=config.activation) for n in config.hidden]
    layers.append(keras.layers.Dense(n_classes, activation=output))
    return keras.Sequential(layers)


MODELS: dict[str, Callable] = {"mlp": build_mlp, "cnn": build_cnn}


def import_builder(path: str) -> Callable:
    """``package.module:function``, importable from the working directory or the config's
    folder."""
    return import_object("model.builder", path)


def build_model(config, input_shape: tuple[int, ...], n_classes: int, output: str,
                trainer: str = "batched"):
    """The study's model with the output activation a loss spec requires, checked for
    ``trainer``."""
    from study.backend import start_tensorflow

    start_tensorflow()  # before Keras imports it, so that its start-up notices stay quiet
    import keras

    if config.builder:
        what = f"model.builder {config.builder!r}"
        try:
            model = import_builder(config.builder)(tuple(input_shape), n_classes, output)
        except ConfigError:
            raise
        except SystemExit as err:  # a plugin does not get to end the study, nor its exit code
            raise ConfigError(f"{what} called sys.exit({err.code!r}): a builder must return "
                              "a keras.Model, not end the program") from None
        except Exception as err:  # the user's code: say whose error it is, in one line
            raise ConfigError(f"{what} failed with {type(err).__name__}: "
                              f"{one_line(err)}") from None
    else:
        model = MODELS[config.kind](config, tuple(input_shape), n_classes, output)
        what = f"model.kind {config.kind!r}"
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{what} returned {type(model).__name__}, not a keras.Model")
    _build_sequential(model, what, input_shape)
    try:
        shape = tuple(model.output_shape)
    except (AttributeError, ValueError):  # a subclassed model, never called: no known output
        raise ConfigError(f"{what} returned a model without a known output shape: build it "
                          "from keras.Input (Sequential or the functional API)") from None
    if shape != (None, n_classes):
        raise ConfigError(f"{what}: output shape {shape}, the dataset needs "
                          f"(None, {n_classes})")
    _check_output_activation(model, what, output)
    if trainer != "batched":
        return model
    # Random layers first: a Dropout layer's seed is non-trainable state too.
    if _has_random_layers(model):
        raise ConfigError(f"{what} has random layers (e.g. Dropout): the batched trainer "
                          "cannot run them (an arm's minibatch order is its only "
                          "randomness there); use trainer: reference")
    if model.non_trainable_variables:
        names = sorted({v.path for v in model.non_trainable_variables})[:3]
        raise ConfigError(f"{what} has non-trainable state ({', '.join(names)}): the batched "
                          "trainer cannot run it (an arm must be a pure function of its "
                          "trainable weights there, e.g. no BatchNormalization); use "
                          "trainer: reference")
    return model


def _build_sequential(model, what: str, input_shape: tuple[int, ...]) -> None:
    """A Sequential given without ``keras.Input`` has no weights until it sees an input:
    build it on the dataset's input shape, as Keras' own ``fit`` would on its first batch."""
    import keras

    if not isinstance(model, keras.Sequential) or model.built:
        return
    try:
        model.build((None, *input_shape))
    except Exception as err:
        raise ConfigError(f"{what}: its Sequential cannot take inputs of shape "
                          f"{tuple(input_shape)} ({type(err).__name__}: {one_line(err)})"
                          ) from None


def output_activation(model) -> str | None:
    """The name of the activation the model's last layer applies (softmax, sigmoid, linear),
    None when that layer has no known one."""
    import keras

    layer = model.layers[-1] if model.layers else None
    while isinstance(layer, keras.Model) and layer.layers:  # a model nested as the last layer
        layer = layer.layers[-1]
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    function = getattr(layer, "activation", None)
    name = getattr(function, "__name__", None)
    return {"softmax_v2": "softmax"}.get(name, name)  # tf.nn.softmax's own name


def _check_output_activation(model, what: str, output: str) -> None:
    """Refused, not wrapped: a model whose last layer is not the activation its loss needs
    (logits for cce, a sigmoid for a softmax loss) would train the wrong maths in silence,
    and adding the activation behind the user's back would make the model that trains differ
    from the one they wrote (and double an activation they applied some other way). The
    builder is told the activation, so one argument fixes it."""
    found = output_activation(model)
    if found != output:
        layer = model.layers[-1].name if model.layers else "none"
        raise ConfigError(f"{what}: its last layer ({layer!r}) applies "
                          f"{found or 'no activation the harness can read'}, the loss needs "
                          f"{output} outputs: end the model with Dense(n_classes, "
                          "activation=output_activation), the builder's third argument")


def _has_random_layers(model) -> bool:
    import keras

    return any(isinstance(layer, keras.layers.Dropout | keras.layers.GaussianNoise
                          | keras.layers.GaussianDropout | keras.layers.AlphaDropout)
               for layer in model._flatten_layers())


def describe(model, config) -> str:
    """A short name for the child runs' ``model`` param, e.g. mlp-64-30-10-sigmoid."""
    if config.builder:
        return f"{config.builder} ({model.count_params()} params)"
    inputs = "x".join(map(str, model.input_shape[1:]))
    if config.kind == "mlp":
        sizes = [math.prod(model.input_shape[1:]), *config.hidden, model.output_shape[-1]]
        return "mlp-" + "-".join(map(str, sizes)) + "-" + config.activation
    conv = "-".join(f"c{f}k{config.kernel_size}" for f in config.filters)
    dense = "".join(f"-{n}" for n in config.hidden)
    return f"cnn-{inputs}-{conv}{dense}-{model.output_shape[-1]}-{config.activation}"
