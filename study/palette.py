"""One colour per loss, shared by the report's figures and the MLflow runs' colours.

Okabe and Ito's palette, which readers with any common colour-vision deficiency can tell
apart: the key contrast, cce against mse, is blue against vermillion. scce repeats cce's
maths; the report dashes its line over cce's, and gives it a colour of its own for MLflow,
which draws no dashes.
"""

import zlib

LOSS_COLOURS = {
    "bce": "#56B4E9",  # sky blue
    "cce": "#0072B2",  # blue
    "scce": "#009E73",  # bluish green
    "mse": "#D55E00",  # vermillion
    "mse_softmax": "#E69F00",  # orange
    "quadratic": "#CC79A7",  # reddish purple
}
# Any other loss (a user's own), by its name. Paul Tol's muted and dark colours, black and
# grey: none is an Okabe-Ito colour above, and none is too light to see on white (Okabe and
# Ito's yellow was). Ten, so that two losses of one study rarely share one; their legends
# tell them apart when they do.
OTHER_COLOURS = ["#000000", "#777777", "#332288", "#882255", "#44AA99", "#117733", "#999933",
                 "#AA4499", "#88CCEE", "#661100"]


def colour(loss: str) -> str:
    """The one colour of a loss, in every figure and in MLflow: its own for a registered
    loss, else one of the others chosen by a checksum of its name (not Python's hash, which
    differs between processes), so it is the same in every process and every report."""
    if loss in LOSS_COLOURS:
        return LOSS_COLOURS[loss]
    return OTHER_COLOURS[zlib.crc32(loss.encode()) % len(OTHER_COLOURS)]
