"""The textbook numbers, reproduced through the harness's own path: config -> Keras model ->
training -> MLflow -> analysis. Nielsen, Neural Networks and Deep Learning, ch. 3 (seed 001)."""

from __future__ import annotations

import numpy as np
import pytest

from study.analysis import load_study, neuron_table
from study.config import load_config
from study.run import run_study
from tests.conftest import CONFIGS, ROOT, tracking_uri

A, B = 0.82, 0.98  # the starts, labelled by their initial output


@pytest.fixture(scope="session")
def neuron(tmp_path_factory, tf):
    uri = tracking_uri(tmp_path_factory.mktemp("neuron"))
    run_study(load_config(CONFIGS / "neuron.yaml"), uri, progress=False)
    return uri, load_study(uri, "neuron")


def _curve(study, loss, start, metric="output"):
    m = study.metric(metric)
    arm = m[(m["loss"] == loss) & (m["severity"] == start)].sort_values("step")
    assert list(arm["step"]) == list(range(301))  # every epoch from 0
    return arm["value"].to_numpy()


def test_four_arms_with_the_books_starts(neuron):
    _, study = neuron
    assert len(study.arms) == 4
    for loss in ("quadratic", "bce"):
        assert _curve(study, loss, A)[0] == pytest.approx(1 / (1 + np.exp(-1.5)))  # 0.8176
        assert _curve(study, loss, B)[0] == pytest.approx(1 / (1 + np.exp(-4.0)))  # 0.9820
        assert _curve(study, loss, B, "weight")[0] == 2.0
        assert _curve(study, loss, A, "bias")[0] == pytest.approx(0.9)


def test_quadratic_cost_matches_the_book(neuron):
    _, study = neuron
    assert _curve(study, "quadratic", A)[300] == pytest.approx(0.094, abs=0.001)  # "about 0.09"
    from_b = _curve(study, "quadratic", B)
    assert from_b[300] == pytest.approx(0.203, abs=0.001)  # the book's 0.20
    assert from_b[150] > 0.9  # "for the first 150 or so epochs ... don't change much"


def test_cross_entropy_learns_fast_from_both_starts(neuron):
    _, study = neuron
    assert _curve(study, "bce", A)[300] < 0.02
    assert _curve(study, "bce", B)[300] < 0.02
    table = neuron_table(study)
    assert table.loc[(B, "bce"), "output at epoch 150"] < 0.05
    assert table.loc[(B, "quadratic"), "output at epoch 150"] > 0.9


@pytest.mark.parametrize("start", [A, B])
def test_logged_gradients_equal_the_formulas(neuron, start):
    _, study = neuron
    x, y = 1.0, 0.0
    a = _curve(study, "quadratic", start)
    sigma_prime = a * (1 - a)
    np.testing.assert_allclose(_curve(study, "quadratic", start, "grad_w"),
                               (a - y) * sigma_prime * x, atol=1e-6)
    np.testing.assert_allclose(_curve(study, "quadratic", start, "grad_b"),
                               (a - y) * sigma_prime, atol=1e-6)
    a = _curve(study, "bce", start)
    np.testing.assert_allclose(_curve(study, "bce", start, "grad_w"), (a - y) * x, atol=1e-6)
    np.testing.assert_allclose(_curve(study, "bce", start, "grad_b"), a - y, atol=1e-6)


def test_neuron_notebook_draws_the_figures_from_the_store(neuron, tmp_path):
    import nbformat
    import papermill

    uri, _ = neuron
    out = tmp_path / "neuron.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "neuron.ipynb"), str(out),
                               parameters={"tracking_uri": uri}, cwd=str(ROOT / "notebooks"),
                               progress_bar=False, kernel_name="python3")
    cells = nbformat.read(out, as_version=4).cells
    images = [o for c in cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2
    assert any("output at epoch 300" in o.get("data", {}).get("text/html", "")
               for c in cells if c.cell_type == "code" for o in c.outputs)
