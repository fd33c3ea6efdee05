"""A rigorous bound on how much a model's outputs can have moved since an earlier step, from
its weight change alone: the batched trainer's crossings skip a slot's val_accuracy at steps
where the bound proves that not enough validation examples can have turned correct to reach
the slot's next level (``study.train.batched``, docs/trainers.md "Exact crossings").

Covered: a stack of Dense layers (Flatten allowed) with elementwise activations of known
Lipschitz constant, and softmax. Per example i and layer l, with the anchor's weights W0 and
the current W, and D_{l-1} bounding the change of the layer's input in the infinity norm:

    |dz_l|_inf <= size(a0_{l-1}) * max_k |dW_k| + D_{l-1} * max_k |W_k|_1 + max |db|
                  + the float32 rounding of both forward passes,
    D_l = Lipschitz(f_l) * |dz_l|_inf + twice the activation's own rounding,

where size(a) is the input's 2-norm times the columns' 2-norms (exact inputs; relu and
linear layers, whose 2-norm is bounded layer by layer) or, for an activation with a bounded
range, that range times the columns' 1-norms. A softmax moves by at most half its inputs'
change in the infinity norm (its Jacobian's rows sum to 2p(1-p) in absolute value). The
rounding of a float32 dot product of n terms is at most gamma_n = n u / (1 - n u) times the
sum of the terms' sizes (any order of summation; u = 2^-24), counted twice here. Everything
is computed in float64, so the bound's own rounding is far below its slack. Every term is
affine in the example's input norm |x_i|, so per slot the bound is two numbers.

An example the anchor gets wrong can be right now only if out[true] >= out[predicted]
(argmax breaks ties by the first index; saturated sigmoids tie at 1.0): ``thresholds``
turns that into the least output pre-activation change that could do it, per example, once
per anchor, and ``may_be_correct`` counts the examples the current bound reaches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# activation -> (Lipschitz constant in the infinity norm, largest |output| or None)
ACTIVATIONS = {"sigmoid": (0.25, 1.0), "tanh": (1.0, 1.0), "softmax": (0.5, 1.0),
               "relu": (1.0, None), "linear": (1.0, None)}
# an activation's own float32 rounding, absolute (generous: a few ulps of 1 are ~1e-7)
ACTIVATION_ROUNDING = {"sigmoid": 1e-5, "tanh": 1e-5, "softmax": 1e-5, "relu": 0.0,
                       "linear": 0.0}
UNIT_ROUNDING = 2.0 ** -24
ROUNDING_SAFETY = 2.0  # the gamma_n of each dot product counted twice
RELATIVE_SLACK, ABSOLUTE_SLACK = 1e-3, 1e-6  # on the final bound


@dataclass(frozen=True)
class Layer:
    inputs: int  # n: the length of each dot product
    units: int
    activation: str


def dense_stack(model) -> tuple[Layer, ...] | None:
    """The model's Dense layers if it is a stack the bound covers, else None: Flatten and
    Dense layers only, each Dense with a bias and a covered activation, its weights the
    model's trainable variables in order (kernel, bias), its first kernel reading the whole
    flattened input."""
    import keras

    layers, variables = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Flatten | keras.layers.InputLayer):
            continue
        if type(layer) is not keras.layers.Dense or not layer.use_bias:
            return None
        name = getattr(layer.activation, "__name__", None)
        name = {"softmax_v2": "softmax"}.get(name, name)
        if name not in ACTIVATIONS or layer.dtype != "float32":
            return None
        n, units = layer.kernel.shape
        layers.append(Layer(int(n), int(units), name))
        variables += [layer.kernel, layer.bias]
    if not layers or [id(v) for v in variables] != [id(v) for v in model.trainable_variables]:
        return None
    if layers[0].inputs != math.prod(model.input_shape[1:]):
        return None  # a Dense on an image's last axis: not a stack of matrix products
    if any(a.units != b.inputs for a, b in zip(layers, layers[1:], strict=False)):
        return None
    return tuple(layers)


def _gamma(n: int) -> float:
    nu = (n + 2) * UNIT_ROUNDING  # n products, their sum and the bias
    return ROUNDING_SAFETY * nu / (1 - nu)


def output_change(layers: tuple[Layer, ...], weights: list, anchors: list, x_norms):
    """Per slot and validation example, a bound on |z(now) - z(anchor)|_inf, z the output
    layer's pre-activations in the float32 forward passes: ``weights`` and ``anchors`` are
    the stacked [K, ...] kernels and biases, ``x_norms`` [N] the 2-norms of the flattened
    validation inputs. Returns [K, N] float64. Every reduction is per slot: no op mixes
    slots."""
    import tensorflow as tf

    x_norms = tf.cast(x_norms, tf.float64)[None, :]
    inputs = _Inputs(sizes=(x_norms, x_norms), largest=None,
                     change=tf.zeros([1, 1], tf.float64))
    for j, layer in enumerate(layers):
        pair = tuple(tuple(tf.cast(v, tf.float64) for v in stack[2 * j:2 * j + 2])
                     for stack in (anchors, weights))
        pre, rounding = _layer_change(layer, inputs, pair)
        if j + 1 < len(layers):
            inputs = _through(layer, inputs, pre, rounding, pair)
    return pre


@dataclass(frozen=True)
class _Inputs:
    """A layer's inputs, per slot and example: their 2-norm in the anchor's pass and now
    (when ``largest`` is None) or the largest |input| of the activation before, and a bound
    on their change in the infinity norm."""
    sizes: tuple
    largest: float | None
    change: object


def _col(w, order):  # [K, n, u] -> [K, u]: each column's norm
    import tensorflow as tf

    return tf.norm(w, ord=order, axis=1)


def _top(v):  # [K, u] -> [K, 1]
    import tensorflow as tf

    return tf.reduce_max(tf.abs(v), axis=1, keepdims=True)


def _layer_change(layer: Layer, inputs: _Inputs, pair) -> tuple:
    """A bound on the change of the layer's pre-activations (infinity norm), and per pass
    a bound on sum_j |a_j W_jk| + |b_k| (what its rounding is proportional to)."""
    (kernel0, bias0), (kernel1, bias1) = pair
    if inputs.largest is None:  # 2-norms of inputs against 2-norms of columns
        moved = inputs.sizes[0] * _top(_col(kernel1 - kernel0, 2))
        rounding = [size * _top(_col(kernel, 2)) + _top(bias) for size, (kernel, bias)
                    in zip(inputs.sizes, pair, strict=True)]
    else:  # largest |input| against 1-norms of columns
        moved = inputs.largest * _top(_col(kernel1 - kernel0, 1))
        rounding = [inputs.largest * _top(_col(kernel, 1)) + _top(bias)
                    for kernel, bias in pair]
    pre = (moved + inputs.change * _top(_col(kernel1, 1)) + _top(bias1 - bias0)
           + _gamma(layer.inputs) * (rounding[0] + rounding[1]))
    return pre, rounding


def _through(layer: Layer, inputs: _Inputs, pre, rounding, pair) -> _Inputs:
    """The next layer's inputs: this layer's activations."""
    import tensorflow as tf

    lipschitz, largest = ACTIVATIONS[layer.activation]
    change = lipschitz * pre + 2 * ACTIVATION_ROUNDING[layer.activation]
    if largest is not None:
        return _Inputs(inputs.sizes, largest, change)
    # relu, linear: |f(z)| <= |z|, so each pass's 2-norm is at most its pre-activations'
    sizes = tuple(
        (size if inputs.largest is None else inputs.largest * math.sqrt(layer.inputs))
        * tf.norm(kernel, axis=[1, 2])[:, None] + tf.norm(bias, axis=1)[:, None]
        + math.sqrt(layer.units) * _gamma(layer.inputs) * r
        for size, (kernel, bias), r in zip(inputs.sizes, pair, rounding, strict=True))
    return _Inputs(sizes, None, change)


def thresholds(outputs, labels, activation: str):
    """Per example of ``outputs`` [..., N, C] (an anchor's), a change of the output
    pre-activations (``output_change``) below which it cannot be right, as [..., N]
    float64: -inf where it is right already (argmax, ties to the first index) or not finite.

    out[true] >= out[predicted] is needed. With sigmoid outputs the slope where each output
    sits is used. The float32 sigmoid is within r of the exact one, so z_true <= logit(A) and
    z_pred >= logit(B), A = out[true] + r, B = out[predicted] - r, and being right needs
    sigmoid(z_true + E) + 2r >= sigmoid(z_pred - E). With h = (B - A - 2r) / 2 that fails
    while neither output has moved by h: below min(logit(A + h) - logit(A),
    logit(B) - logit(B - h)). Otherwise the activation's Lipschitz constant L:
    E >= (margin / 2 - 2r) / L."""
    import tensorflow as tf

    f64 = tf.float64
    predicted = tf.argmax(outputs, axis=-1, output_type=labels.dtype)
    out = tf.cast(outputs, f64)
    is_true = tf.one_hot(labels, outputs.shape[-1], True, False)
    true = tf.reduce_max(tf.where(is_true, out, tf.constant(-np.inf, f64)), axis=-1)
    top = tf.reduce_max(out, axis=-1)
    rounding = ACTIVATION_ROUNDING[activation]
    if activation == "sigmoid":
        def logit(p):
            return tf.math.log(p) - tf.math.log1p(-p)

        low, high = true + rounding, top - rounding
        half = (high - low - 2 * rounding) / 2
        usable = half > 0  # else: right as soon as anything moves
        low, high = tf.where(usable, low, 0.25), tf.where(usable, high, 0.75)
        half = tf.where(usable, half, 0.125)
        needed = tf.where(usable, tf.minimum(logit(low + half) - logit(low),
                                             logit(high) - logit(high - half)), 0.0)
    else:
        needed = ((top - true) / 2 - 2 * rounding) / ACTIVATIONS[activation][0]
    right = (predicted == labels) | ~tf.math.is_finite(needed)
    return tf.where(right, tf.constant(-np.inf, f64), needed)


def may_be_correct(thresholds, change):
    """[K] upper bounds on the correct examples now: those whose ``thresholds`` [K, N] the
    ``change`` [K, N] reaches (with slack), those right at the anchor included. NaN counts
    as possibly correct."""
    import tensorflow as tf

    change = change * (1 + RELATIVE_SLACK) + ABSOLUTE_SLACK
    return tf.reduce_sum(tf.cast(~(change < thresholds), tf.float64), axis=-1)
