"""Your own losses for the harness, three ways Keras takes a loss (examples/focal.yaml).

Each gives one value per example; Keras (and the harness) average them over the batch.
"""

import keras
from keras import ops


def focal(y_true, y_pred, gamma=2.0):
    """Focal loss (Lin et al., 2017) on softmax outputs with one-hot targets, per example:
    -sum_c y_c (1 - p_c)^gamma log p_c. gamma = 0 is categorical cross-entropy; a larger
    gamma down-weights the examples the model already gets right."""
    p = ops.clip(y_pred, 1e-7, 1.0)
    return -ops.sum(y_true * ops.power(1.0 - p, gamma) * ops.log(p), axis=-1)


# A keras.losses.Loss instance: cross-entropy computed from the logits, so the model's last
# layer is linear (output: linear in the config) and the softmax is inside the loss.
cce_logits = keras.losses.CategoricalCrossentropy(from_logits=True)
