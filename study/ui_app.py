"""The `mlflow ui --app-name study` app: MLflow's own server, whose page starts with the
study's browser-side defaults.

MLflow 3.17 keeps a group's colour, the workflow (GenAI or model training) and the Assistant
panel in the browser's local storage, not in a saved view (study/browse.py), so a link
cannot set them. This ASGI app wraps MLflow's (``mlflow.server.fastapi_app:app``) and adds
to its one HTML page a short inline script, run before MLflow's own, that fills in those
entries where the browser holds no choice yet, and never replaces one it holds:

- ``experimentRunColors``: the report's colour of each loss (study.palette) for the group id
  MLflow gives a group by loss (``param.loss.<name>``), for the built-in losses and those the
  studies in the store name (experiment tag ``study.losses``);
- ``mlflow.workflowType_v1``: model training, so pages whose URL names no ``workflowType``
  (a view picked from the view menu, the experiment list) stay in it, not in GenAI;
- the view menu's links: ``compareRunsMode=CHART`` (the charts beside the table, a URL
  parameter MLflow does not store) where the link names no mode;
- ``mlflow.assistant.panelOpen_v1`` false and ``mlflow.assistant.fab.autoOpenedOnFirstLoad_v1``
  true: MLflow opens the Assistant on a first visit to a local server, unless the latter says
  it did already.

The keys and formats are those of MLflow 3.17's front end (its ``useLocalStorage`` stores
JSON under ``<key>_v<version>``); tests/test_browser.py fails when a new MLflow reads others.
"""

from __future__ import annotations

import asyncio
import json
import os
from functools import cache

from study.browse import GROUP_KEY, LOSSES_TAG
from study.palette import colour

# MLflow's own serving of its page: "/" under the optional static prefix
PREFIX_ENV = "_MLFLOW_STATIC_PREFIX"
STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"  # the server's backend store URI


def group_colours(losses) -> dict[str, str]:
    """MLflow's group id of each loss's group (RunsGroupByConfig mode.key.value) -> colour."""
    return {f"param.{GROUP_KEY}.{loss}": colour(loss) for loss in losses}


def defaults(losses) -> dict:
    """What the page sets where the browser holds nothing: {local storage key: value}, the
    colours as a map merged under the browser's own."""
    return {"experimentRunColors": group_colours(losses),
            "mlflow.workflowType_v1": "machine_learning",
            "mlflow.assistant.panelOpen_v1": False,
            "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}


# Keeps every entry the browser has; for the colours, every group colour it has. A broken
# entry (not JSON) is MLflow's to handle: left as it is. The view menu opens a saved view at
# "#/experiments/<id>/runs?viewStateShareKey=<key>", which MLflow shows as a table: the
# history call that goes there gets compareRunsMode=CHART, as the printed link has, unless the
# URL names a mode, and a popstate then makes MLflow's router read the URL it holds (it keeps
# its own copy of the one it pushed).
_SCRIPT = r"""<script>(function(d){try{var s=window.localStorage;
for(var k in d){var v=s.getItem(k);
if(k==="experimentRunColors"){var m;try{m=v?JSON.parse(v):{}}catch(e){continue}
if(!m||typeof m!=="object")continue;var c=d[k];for(var g in c){if(!(g in m))m[g]=c[g]}
s.setItem(k,JSON.stringify(m))}
else if(v===null){s.setItem(k,JSON.stringify(d[k]))}}}catch(e){}
var h=window.history;["pushState","replaceState"].forEach(function(f){var o=h[f];
h[f]=function(st,t,u){if(typeof u==="string"&&/#\/experiments\/[^/?]+\/runs\?/.test(u)
&&/[?&]viewStateShareKey=/.test(u)&&!/[?&]compareRunsMode=/.test(u)){
o.call(h,st,t,u+"&compareRunsMode=CHART");setTimeout(function(){
window.dispatchEvent(new PopStateEvent("popstate",{state:h.state}))},0);return}
return o.call(h,st,t,u)}})})(%s);</script>"""


def page_script(losses) -> str:
    """The inline script, its data as JSON with <, > and & escaped (a loss name cannot close
    the script element)."""
    data = json.dumps(defaults(losses), sort_keys=True)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        data = data.replace(char, escape)
    return _SCRIPT % data


def store_losses() -> list[str]:
    """The built-in losses, then any other the store's studies name."""
    from mlflow.tracking import MlflowClient

    from study.losses import LOSSES

    names = dict.fromkeys(LOSSES)
    uri = os.environ.get(STORE_ENV)
    if uri:
        for experiment in MlflowClient(uri).search_experiments():
            try:
                names.update(dict.fromkeys(json.loads(experiment.tags.get(LOSSES_TAG, "[]"))))
            except (ValueError, TypeError):
                continue  # a tag someone else wrote: not the study's
    return [str(name) for name in names]


def inject(html: bytes, script: str) -> bytes:
    """The page with the script first in its head (before MLflow's deferred bundle)."""
    head = html.find(b"<head>")
    if head < 0:
        return html
    at = head + len(b"<head>")
    return html[:at] + script.encode() + html[at:]


@cache
def _mlflow_app():
    # imported at the server's start (its lifespan call), not when tests import this module
    from mlflow.server.fastapi_app import app

    return app


def _is_page(scope) -> bool:
    prefix = os.environ.get(PREFIX_ENV, "").rstrip("/")
    return (scope["type"] == "http" and scope["method"] == "GET"
            and scope["path"] in (f"{prefix}/", prefix or "/"))


async def _serve(scope, receive, send):
    """MLflow's app; its page, whole (never a 304 of a page cached without the script),
    with the script in it."""
    if not _is_page(scope):
        await _mlflow_app()(scope, receive, send)
        return
    conditional = (b"if-none-match", b"if-modified-since", b"accept-encoding")
    scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                  if k.lower() not in conditional]}
    start, body = {}, []

    async def hold(message):
        if message["type"] == "http.response.start":
            start.update(message)
            return
        body.append(message.get("body", b""))
        if message.get("more_body"):
            return
        html, headers = b"".join(body), list(start.get("headers", []))
        content_type = dict(headers).get(b"content-type", b"")
        if start.get("status") == 200 and content_type.startswith(b"text/html"):
            losses = await asyncio.to_thread(store_losses)  # a store query: off the loop
            html = inject(html, page_script(losses))
            drop = (b"content-length", b"etag", b"last-modified", b"cache-control")
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
            headers += [(b"content-length", str(len(html)).encode()),
                        (b"cache-control", b"no-store")]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": html})

    await _mlflow_app()(scope, receive, hold)


class _App:
    # an instance, not a function: MLflow runs a function entry point as an app factory
    async def __call__(self, scope, receive, send):
        await _serve(scope, receive, send)


app = _App()
