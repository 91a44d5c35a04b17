"""The Ray Serve application: a FastAPI ingress deployment over one model directory.

Run it::

    serve run serve.app:build_app model=/abs/path/to/MODEL      # or:
    serve run serve/config.yaml                                 # or:
    python -m jobs.deploy --model MODEL [--host 127.0.0.1] [--port 8000]

Why it is built this way:

- The model is loaded in ``reconfigure(user_config)``, not ``__init__``: a new model directory
  (or candidate count) is then a ``user_config`` change, which Serve applies to the running
  replicas in place, with no restart and no downtime. ``serve.run``/``serve deploy`` with a
  new ``model`` argument does exactly that.
- ``/recommend`` goes through ``@serve.batch``: concurrent requests to one replica are grouped
  into one call of :meth:`ModelService.recommend_many`, all answered by the same model version.
- ``autoscaling_config`` adds replicas when each has more than ``target_ongoing_requests``
  requests in flight and removes them when idle; replicas ask for a fraction of a CPU so
  that several fit on a small machine beside the proxy.
"""

# No `from __future__ import annotations` here: Serve rebuilds the ingress routes in the replica
# and cannot resolve string annotations (the request models become unresolved ForwardRefs and
# /openapi.json fails).

from typing import Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application

from ncf.model.directory import read_config
from ncf.registry import resolve_model
from serve.api import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    Health,
    NotReady,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    create_app,
    describe_errors,
)
from serve.service import ModelService, ServeSettings

DEPLOYMENT_NAME = "Recommender"
MAX_BATCH_SIZE = 16
BATCH_WAIT_S = 0.002  # short: under light load a request should not wait for company

app = create_app()


@serve.deployment(
    name=DEPLOYMENT_NAME,
    # Above the batch size, so that a full batch can form; the autoscaler reacts well before.
    max_ongoing_requests=2 * MAX_BATCH_SIZE,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
    ray_actor_options={"num_cpus": 0.5},
)
@serve.ingress(app)
class RecommenderDeployment:
    """One replica: a :class:`ModelService` swapped as a whole on every reconfigure."""

    def __init__(self, threads: int = 1) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        # Several replicas share a few cores: one compute thread each. BLAS (numpy's first-stage
        # matrix product) needs its own limit: its idle threads spin, and on the demo model
        # they more than doubled the CPU a request costs (31 -> 12 ms).
        torch.set_num_threads(threads)
        threadpool_limits(threads)
        self._service: Optional[ModelService] = None

    def reconfigure(self, user_config: Dict) -> None:
        """Loads the model named by ``user_config`` (see :class:`ServeSettings`), then swaps it in."""
        settings = ServeSettings.from_user_config(user_config)
        self._service = ModelService.load(settings, previous=self._service)

    def _ready(self) -> ModelService:
        service = self._service
        if service is None:
            raise NotReady("no model loaded yet")
        return service

    @app.get("/healthz", response_model=Health)
    def healthz(self) -> Dict:
        """200 with the model version once a model is loaded, 503 before."""
        return self._ready().health()

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend(self, request: RecommendRequest) -> Dict:
        """Top-``k`` products for one user at ``at`` (unknown users: cold start, flagged)."""
        return await self._recommend_batched(request)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _recommend_batched(self, requests: List[RecommendRequest]) -> List[Dict]:
        return self._ready().recommend_many(requests)

    @app.post("/recommend/batch", response_model=BatchRecommendResponse, response_model_exclude_none=True)
    def recommend_batch(self, request: BatchRecommendRequest) -> Dict:
        """Top-``k`` products for each of up to MAX_BATCH_USERS users, in request order."""
        return self._ready().recommend_batch(request)

    @app.post("/score", response_model=ScoreResponse)
    def score(self, request: ScoreRequest) -> Dict:
        """Purchase probabilities of the given products (unknown product ids: 422 naming them)."""
        return self._ready().score(request)


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (``serve run serve.app:build_app key=value ...`` or the
    ``args`` of an application in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="model directory to serve, or current (the model registry's current version, resolved when "
        "the app is built: deploying again after a rollback serves the previous model)"
    )
    data: Optional[str] = Field(
        None, description="DATA directory whose histories the model ranks from (default: the model's own state)"
    )
    candidates: Optional[int] = Field(None, ge=1, description="first-stage candidates re-ranked (default: the model's)")
    default_at: Literal["now", "data-end"] = "now"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)
    upscale_delay_s: float = Field(5, ge=0)
    downscale_delay_s: float = Field(30, ge=0)
    # Ray wants it above the replicas' metrics interval (10 s); below, the autoscaler sees no data.
    look_back_period_s: float = Field(30, gt=10, description="window the ongoing requests are averaged over")
    num_cpus: float = Field(0.5, gt=0, description="CPUs each replica requests")


def build_app(args: Dict) -> Application:
    """The application for ``args`` (a dict or :class:`AppArgs`); checks the settings here, so a
    typo fails the deploy command rather than the replicas."""
    try:
        a = AppArgs.model_validate(dict(args))
    except ValidationError as e:
        raise ValueError(f"bad application args: {describe_errors(e.errors())}") from None
    if a.max_replicas < max(a.min_replicas, 1):
        raise ValueError(f"max_replicas ({a.max_replicas}) is below min_replicas ({a.min_replicas})")
    settings = ServeSettings.from_user_config(
        {"model_dir": resolve_model(a.model), "candidates": a.candidates, "default_at": a.default_at, "data": a.data}
    )
    read_config(settings.model_dir)  # not a model directory: fail here, with its path
    return RecommenderDeployment.options(
        user_config=settings.user_config(),
        autoscaling_config={
            "min_replicas": a.min_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
            "look_back_period_s": a.look_back_period_s,
        },
        ray_actor_options={"num_cpus": a.num_cpus},
    ).bind()
