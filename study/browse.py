"""Browse: the MLflow view that a printed link opens, and the run names and tags behind it.

MLflow 3.17's runs page reads a saved view from an experiment tag
``mlflow.sharedViewState.<key>`` when the URL carries ``?viewStateShareKey=<key>``: the
search filter, the table's columns, the chart cards and the grouping. We write one saved view
per start of the study (the link's is the worst start of the first family that saturates the
output: the stall the study is about), filtered to that start and to each loss at its own best
learning rate, runs grouped by loss (MLflow draws one line per group, the mean over its seeds,
with a band from their min to their max), ``val_accuracy`` then ``val_nll`` against step. A
loss that is another's update exactly (``LossSpec.same_update_as`` with factor 1: scce is cce)
is folded into it, and the view's name says so, since its line would lie on the other's.

Runs carry the report's colour of their loss in MLflow's run tag ``mlflow.runColor``. A
group's colour, the workflow (GenAI or model training), the chart/table mode and the
Assistant panel MLflow 3.17 keeps in the browser (local storage, e.g. ``experimentRunColors``
keyed by the group id ``param.loss.<name>``; the URL's ``workflowType`` and
``compareRunsMode``), not in a saved view: the printed link carries the URL's part, and
study.ui_app (``mlflow ui --app-name study``) sets the stored part where the browser holds
none, the colours from the experiment tag ``study.losses`` written here. The JSON shape
written here is what the front end of the MLflow
range pinned in pyproject.toml reads; tests/test_browser.py opens it in Chromium and fails
when a new MLflow stops honouring it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable

from study.grid import Arm
from study.inits import start_name as start_label
from study.palette import colour as loss_colour

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's experiment tag for a saved view
VIEW_URL_PARAM = "viewStateShareKey"
LINK_VIEW_TAG = "study.view"  # the experiment's saved view that printed links open
LOSSES_TAG = "study.losses"  # its losses, a JSON list: study.ui_app colours their groups
METRICS = ("val_accuracy", "val_nll")  # charted, in this order
# The study's other metrics (study.train.common.METRICS, NEURON_METRICS) get cards in a
# collapsed section: MLflow would otherwise add a drawn card for each.
OTHER_METRICS = ("train_loss", "train_accuracy", "val_brier", "grad_norm", "output", "weight",
                 "bias", "grad_w", "grad_b")
GROUP_KEY = "loss"  # the run parameter the view groups by
DEFAULT_PORT = 5000


def run_name(arm: Arm, with_optimizer: bool = False) -> str:
    """A child run's name as the table shows it: 'mse · saturated_wrong m=8 · s3 · lr 32'
    (the optimizer after the loss when the study has several). The exact arm key stays in the
    tag ``study.arm``."""
    loss = f"{arm.loss} · {arm.optimizer}" if with_optimizer else arm.loss
    return f"{loss} · {start_label(arm.init, arm.severity)} · s{arm.seed} · lr {arm.lr:g}"


def arm_tags(arm: Arm, best_lr: bool | None) -> dict[str, str]:
    """The tags that the saved views filter and colour by. ``best_lr`` is None while it is
    not known yet (a grid of rates: the report sets it)."""
    tags = {"start": start_label(arm.init, arm.severity), "mlflow.runColor": loss_colour(arm.loss)}
    if best_lr is not None:
        tags["study.best_lr"] = str(best_lr).lower()
    return tags


def one_rate_per_loss(arms: Iterable[Arm]) -> bool:
    """True when every (loss, optimizer) runs at one learning rate: then each arm is at its
    loss's chosen rate already (picked before the study, as configs/default.yaml's are)."""
    rates: dict[tuple[str, str], set[float]] = {}
    for arm in arms:
        rates.setdefault((arm.loss, arm.optimizer), set()).add(arm.lr)
    return all(len(lrs) == 1 for lrs in rates.values())


def starts_of(arms: Iterable[Arm]) -> StudyStarts:
    """The study's starts in grid order (and its losses, for the views' grouping)."""
    arms = list(arms)
    return StudyStarts(dict.fromkeys((arm.init, arm.severity) for arm in arms),
                       dict.fromkeys(arm.loss for arm in arms))


def default_start(starts: list[tuple[str, float]]) -> tuple[str, float]:
    """The start the link opens on: the worst (highest) severity of the first family that
    saturates the output (the stall the study is about), else of the first family that is
    not the control, else the first start."""
    from study.inits import INITS

    families = list(dict.fromkeys(init for init, _ in starts
                                  if init not in INITS or not INITS[init].control))
    if not families:
        return starts[0]
    saturating = [init for init in families if init in INITS and INITS[init].saturates_output]
    family = (saturating or families)[0]
    return family, max(severity for init, severity in starts if init == family)


def folded_losses(losses: Iterable[str]) -> dict[str, str]:
    """The study's losses that are another of its losses' update exactly (same maths, same
    rate: ``same_update_as`` with factor 1), each mapped to that loss: {'scce': 'cce'}."""
    from study.losses import LOSSES

    present = set(losses)
    folded = {}
    for name in present:
        spec = LOSSES.get(name)
        if spec is None or spec.same_update_as is None:
            continue
        other, factor = spec.same_update_as
        # factor 1 at any number of classes: the updates are equal, not just proportional
        if other in present and all(factor(n) == 1.0 for n in (2, 10, 100)):
            folded[name] = other
    return folded


class StudyStarts(list):
    """The study's starts in grid order, with the losses the views group by."""

    def __init__(self, starts: Iterable[tuple[str, float]], losses: Iterable[str] = ()):
        super().__init__(starts)
        self.losses = tuple(losses)


def view_key(start: str) -> str:
    """A URL-safe saved-view key for a start: 'saturated_wrong m=8' -> 'saturated_wrong-m8'."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", start.replace("=", "")).strip("-") or "start"


def comparison_filter(start: str, best_lr: bool = True, config_hash: str | None = None,
                      folded: Iterable[str] = ()) -> str:
    """The runs filter of one start's comparison, as typed in MLflow's search box."""
    parts = [f"tags.start = '{start}'"]
    if best_lr:
        parts.append("tags.`study.best_lr` = 'true'")
    if config_hash:
        parts.append(f"tags.`study.config_hash` = '{config_hash}'")
    parts += [f"params.{GROUP_KEY} != '{loss}'" for loss in sorted(folded)]
    return " and ".join(parts)


def group_by(best_lr: bool) -> dict:
    """MLflow's RunsGroupByConfig: by loss, the mean line (MLflow offers min, mean and max; no
    median) and the band from min to max. While a loss runs at several rates whose pick is not
    known yet (before `make report`), by loss and rate, so no line mixes rates."""
    keys = [{"mode": "param", "groupByData": GROUP_KEY}]
    if not best_lr:
        keys.append({"mode": "param", "groupByData": "lr"})
    return {"aggregateFunction": "average", "groupByKeys": keys}


def _line_chart(metric: str, section: str) -> dict:
    # A RunsChartsLineCardConfig as MLflow serializes it: the values are its defaults except
    # the metric, a log step axis (steps are logged log-spaced, as the report draws them)
    # and no smoothing.
    return {"uuid": f"study-{metric}", "type": "LINE", "runsCountToCompare": 100,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "metricKey": metric, "selectedMetricKeys": [metric], "lineSmoothness": 0,
            "xAxisScaleType": "log", "scaleType": "linear", "xAxisKey": "step",
            "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [],
            "ignoreOutliers": False, "useGlobalXaxisKey": False,
            "useGlobalLineSmoothing": False,
            "range": {"xMin": None, "xMax": None, "yMin": None, "yMax": None}}


def _section(uuid: str, name: str, display: bool, **layout) -> dict:
    return {"uuid": uuid, "name": name, "display": display, "isReordered": True,
            "deleted": False, "isGenerated": False, **layout}


def view_state(search_filter: str, best_lr: bool = True) -> dict:
    """The saved view's state: the search facets and the UI state fields MLflow's experiment
    page takes from a shared view (pinned and expanded runs are not among them: MLflow drops
    them, so the filter leaves the parent run out and its children show as rows)."""
    shown, other = "study-comparison", "study-other"
    return {
        # search facets (EXPERIMENT_PAGE_QUERY_PARAM_KEYS)
        "searchFilter": search_filter,
        "orderByKey": "params.`loss`", "orderByAsc": True,
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        # UI state (EXPERIMENT_PAGE_UI_STATE_FIELDS)
        "selectedColumns": ["params.`loss`", "tags.`start`", "params.`optimizer`",
                            "params.`lr`", "params.`seed`", "metrics.`val_accuracy`",
                            "metrics.`val_nll`"],
        # room for the run names and starts (MLflow's default is 190 and 100 px)
        "columnWidths": {"attributes.`Run Name`": 320, "tags.`start`": 170},
        "runsHiddenMode": "SHOW_ALL",  # every group of the filter, not the first 10
        # the two charts first, two a row, tall enough for a key line per loss; every other
        # metric in a collapsed section, not drawn until opened. That section is named as
        # MLflow's default one, so MLflow puts the cards it makes for metrics that have none
        # (the study's crossing_<level>) there too.
        "compareRunCharts": [_line_chart(metric, shown) for metric in METRICS]
        + [_line_chart(metric, other) for metric in OTHER_METRICS],
        "compareRunSections": [_section(shown, "Each loss from this start", True, columns=2,
                                        cardHeight=440),
                               _section(other, "Model metrics", False)],
        "isAccordionReordered": True,
        # one line per group: MLflow aggregates the runs of a group in its charts
        "groupBy": group_by(best_lr), "groupsExpanded": {}, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "viewMaximized": False, "runListHidden": False,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0,
                                  "selectedXAxisMetricKey": ""},
    }


def saved_view(name: str, state: dict) -> str:
    """The experiment tag's value: MLflow 3.17's saved-view envelope around the state."""
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now,
                       "state": json.dumps(state)})


def view_name(start: str, folded: dict[str, str]) -> str:
    """The saved view's name in the view menu: the start, and which losses are folded."""
    note = "".join(f"; {loss} = {other}, not drawn" for loss, other in sorted(folded.items()))
    return f"losses from {start}{note}"


def publish_views(client, experiment_id: str, starts: list[tuple[str, float]],
                  best_lr: bool, config_hash: str | None = None, set_link: bool = True,
                  losses: Iterable[str] | None = None) -> str:
    """One saved view per start on the experiment; with ``set_link``, the key of the view
    that links open goes in the experiment tag ``study.view`` (for `make ui`). ``losses``
    (by default the starts' own, from ``starts_of``) say which are folded. Returns the key of
    the link's view."""
    if losses is None:
        losses = getattr(starts, "losses", ())
    losses = list(losses)
    folded = folded_losses(losses)
    client.set_experiment_tag(experiment_id, LOSSES_TAG, json.dumps(losses))
    for init, severity in starts:
        start = start_label(init, severity)
        state = view_state(comparison_filter(start, best_lr, config_hash, folded), best_lr)
        client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + view_key(start),
                                  saved_view(view_name(start, folded), state))
    key = view_key(start_label(*default_start(starts)))
    if set_link:
        client.set_experiment_tag(experiment_id, LINK_VIEW_TAG, key)
    return key


def study_note(answer: list[str], starts: list[tuple[str, float]], config_hash: str,
               report: str) -> str:
    """The parent run's description (Markdown, rendered by MLflow's UI): the report's
    answer, then a filter per start to paste into the runs page's search box. ``report`` is
    Markdown already; every other string is escaped (study.markup)."""
    from study.markup import md_block, md_code, md_lines, md_text

    keep = md_code(f"and tags.`study.config_hash` = '{config_hash}'")
    lines = [f"**What the report found** ({report}):", "", md_lines(answer)]
    lines += ["", "**Filters**: paste one into the runs page's search box (each loss at its "
              f"own best learning rate from one start; add {keep} to keep to this config). "
              "The view menu's saved views \"losses from ...\" open the same with charts.", ""]
    for init, severity in starts:
        start = start_label(init, severity)
        lines += [f"{md_text(start)}:", *md_block(comparison_filter(start))]
    return "\n".join(lines)


def ui_port(port: int | None = None) -> int:
    """The port of `make ui`: given, else $PORT (the Makefile passes its PORT), else 5000."""
    import os

    if port is not None:
        return port
    value = os.environ.get("PORT", "")
    return int(value) if value.isdigit() else DEFAULT_PORT


def page(experiment_id: str, key: str | None = None) -> str:
    """The runs page of an experiment (MLflow 3 otherwise opens its GenAI overview), with the
    charts beside the table and, given a key, that saved view."""
    query = "workflowType=machine_learning&compareRunsMode=CHART"
    if key:
        query += f"&{VIEW_URL_PARAM}={key}"
    return f"#/experiments/{experiment_id}/runs?{query}"


def server_url(tracking_uri: str, port: int | None = None) -> str:
    """Where the UI is: a tracking server's own URL, else `make ui` on this machine."""
    from urllib.parse import urlparse

    if urlparse(tracking_uri).scheme in ("http", "https"):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{ui_port(port)}"


def view_link(tracking_uri: str, experiment_id: str, key: str | None = None,
              port: int | None = None) -> str:
    return f"{server_url(tracking_uri, port)}/{page(experiment_id, key)}"


def stored_view_key(tracking_uri: str, experiment_id: str) -> str | None:
    """The key of the saved view that the study's link opens, as its experiment stores it."""
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri).get_experiment(experiment_id)
    return experiment.tags.get(LINK_VIEW_TAG)


def study_links(tracking_uri: str, port: int | None = None) -> list[tuple[str, str]]:
    """(experiment name, link) of every experiment in the store that holds a saved view of
    a study, in name order."""
    from mlflow.tracking import MlflowClient

    experiments = MlflowClient(tracking_uri).search_experiments()
    return sorted((e.name, view_link(tracking_uri, e.experiment_id, e.tags[LINK_VIEW_TAG],
                                     port))
                  for e in experiments if LINK_VIEW_TAG in e.tags)
