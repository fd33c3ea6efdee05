"""One colour per loss, shared by the report's figures and the MLflow runs' colours.

Okabe and Ito's palette, which readers with any common colour-vision deficiency can tell
apart: the key contrast, cce against mse, is blue against vermillion. scce repeats cce's
maths; the report dashes its line over cce's, and gives it a colour of its own for MLflow,
which draws no dashes.
"""

LOSS_COLOURS = {
    "bce": "#56B4E9",  # sky blue
    "cce": "#0072B2",  # blue
    "scce": "#009E73",  # bluish green
    "mse": "#D55E00",  # vermillion
    "mse_softmax": "#E69F00",  # orange
    "quadratic": "#CC79A7",  # reddish purple
}
# Any other loss (a registry entry of the user's own), in turn.
OTHER_COLOURS = ["#000000", "#F0E442", "#777777", "#882255", "#44AA99", "#332288"]


def colour(loss: str) -> str:
    """The one colour of a loss, in every figure and in MLflow: its own for a registered
    loss, else one of the others chosen by its name, so it is the same in every process."""
    if loss in LOSS_COLOURS:
        return LOSS_COLOURS[loss]
    return OTHER_COLOURS[sum(map(ord, loss)) % len(OTHER_COLOURS)]
