"""Your own model for the harness (examples/builder.yaml).

The harness calls ``build(input_shape, n_classes, output_activation)``: input_shape is one
example's shape without the batch axis ((8, 8) for digits, (28, 28) for mnist, (40,) for
mnist1d), n_classes the number of output units (10), output_activation the activation the
study's loss needs on the last layer ("sigmoid", "softmax" or "linear").
"""

import keras


def build(input_shape, n_classes, output_activation):
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Flatten(),                    # the digits are 8x8 images
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(n_classes, activation=output_activation),  # what the loss needs
    ])
