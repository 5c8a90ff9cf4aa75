"""The MLflow UI opening in its model-training view: `mlflow ui --app-name model-training`.

MLflow 3.17's UI shows every experiment in the mode of its sidebar toggle (GenAI or Model training),
which a new browser starts in GenAI: the experiment's `mlflow.experimentKind` tag is not read, so
clicking an experiment in the list, or a model on a run's page, opens an empty traces page. The
toggle's choice is kept in the browser (localStorage `mlflow.workflowType_v1`). This app is MLflow's
own server with one addition: its page sets that choice to Model training when the browser has made
none, before the UI starts; a user who picks GenAI with the toggle keeps it. Registered as the
`mlflow.app` entry point `model-training` (pyproject.toml), the way MLflow's `basic-auth` is.
"""

from __future__ import annotations

from flask import Response

WORKFLOW_KEY = "mlflow.workflowType_v1"  # the UI's useLocalStorage key (its `${key}_v${version}`)
DEFAULT_VIEW = (
    f"<script>try{{if(!localStorage.getItem('{WORKFLOW_KEY}'))"
    f"localStorage.setItem('{WORKFLOW_KEY}',JSON.stringify('machine_learning'))}}catch(e){{}}</script>"
)


def with_model_training_default(response: Response) -> Response:
    """The UI's page with `DEFAULT_VIEW` first in its head; every other response as it is."""
    if response.mimetype != "text/html" or response.status_code != 200:
        return response
    response.direct_passthrough = False
    page = response.get_data(as_text=True)
    if "<head>" in page and WORKFLOW_KEY not in page:
        response.set_data(page.replace("<head>", "<head>" + DEFAULT_VIEW, 1))
    return response


def create_app():
    """MLflow's server app with `with_model_training_default`: the Flask app, or under uvicorn (MLflow's
    default server) the FastAPI app around it, as MLflow's own `basic-auth` app does."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app

    app.after_request(with_model_training_default)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
