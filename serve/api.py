"""The HTTP contract of the Serve application: request and response models, limits, errors.

Everything here is plain FastAPI + pydantic (no Ray), so the contract can be read in one place
and checked without a cluster. The routes themselves live on the deployment class
(:mod:`serve.app`), because Serve binds FastAPI routes to the replica's methods.

Every error, whatever its cause, is JSON ``{"error": "<message>", ...}`` with a 4xx status for
bad input: FastAPI's validation errors (malformed JSON, wrong types, limits) become 422 with a
message listing each problem, an oversized body 413, unknown routes 404. A real bug is still a
500, so that it is seen rather than blamed on the client.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, List, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ncf.rank.ranker import MAX_K

# -- limits (security defaults: small bodies, bounded work per request) -----------------------

MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_USERS = 100
MAX_PRODUCT_IDS = 1000
MAX_ID_CHARS = 128
# ``at`` must fall in this window: it keeps the date arithmetic of the temporal features (and
# pandas' timestamp range) away from overflow, and catches epoch milliseconds sent as seconds.
MIN_AT = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_AT = datetime(2200, 1, 1, tzinfo=timezone.utc)


def _check_at(value: Optional[datetime]) -> Optional[datetime]:
    """Naive times are UTC; the moment must fall in [MIN_AT, MAX_AT)."""
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not MIN_AT <= aware < MAX_AT:
        raise ValueError(f"at must be between {MIN_AT.date()} and {MAX_AT.date()}")
    return aware


At = Annotated[
    Optional[datetime],
    AfterValidator(_check_at),
    Field(
        description="the moment to rank for (ISO-8601 or epoch seconds; naive times are UTC); "
        "default: the deployment's default_at (now, or the model's data end)"
    ),
]

# Raw ids may be integers or strings (the vocabulary compares them as strings).
RawId = Union[StrictInt, Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]]


class _Strict(BaseModel):
    """Unknown fields are refused, so a misspelt option is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class RankingOptions(_Strict):
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K, description="how many products")] = 10
    at: At = None
    exclude_purchased: Annotated[bool, Field(strict=True)] = False
    explain: Annotated[bool, Field(strict=True, description="add the past purchases the attention weighted most")] = (
        False
    )


class RecommendRequest(RankingOptions):
    user_id: RawId


class BatchRecommendRequest(RankingOptions):
    user_ids: Annotated[List[RawId], Field(min_length=1, max_length=MAX_BATCH_USERS)]


class ScoreRequest(_Strict):
    user_id: RawId
    product_ids: Annotated[List[RawId], Field(min_length=1, max_length=MAX_PRODUCT_IDS)]
    at: At = None


class Because(BaseModel):
    product_id: Union[int, str]
    weight: float


class Item(BaseModel):
    product_id: Union[int, str]
    score: float
    because: Optional[List[Because]] = None


class Recommendation(BaseModel):
    user_id: Union[int, str]
    cold_start: bool = Field(description="true for users the model does not know: popular products at that hour")
    items: List[Item]


class RecommendResponse(Recommendation):
    at: datetime
    model_version: str


class BatchRecommendResponse(BaseModel):
    results: List[Recommendation]
    at: datetime
    model_version: str


class ScoreResponse(BaseModel):
    user_id: Union[int, str]
    scores: List[float]
    at: datetime
    model_version: str


class Health(BaseModel):
    status: str
    model_version: str
    model_dir: str


class UnknownProducts(ValueError):
    """Product ids outside the model's catalog (a client error: 422 naming them)."""

    def __init__(self, product_ids: List) -> None:
        super().__init__(f"unknown product ids: {product_ids}")
        self.product_ids = product_ids


class NotReady(RuntimeError):
    """No model loaded yet (503, so load balancers and tests wait)."""


# -- looking at a household: its baskets, product labels, id search (the explorer page's routes) --

MAX_BASKETS = 50
MAX_SEARCH_RESULTS = 50


class HistoryRequest(_Strict):
    user_id: RawId
    at: At = None
    baskets: Annotated[
        int, Field(strict=True, ge=1, le=MAX_BASKETS, description="how many of the latest baskets before at")
    ] = 5


class Product(BaseModel):
    product_id: Union[int, str]
    department: Optional[str] = Field(description="the catalog's department (None when it has none)")
    category: Optional[str] = Field(description="the catalog's category (None when it has none)")


class BasketItem(Product):
    lines: int = Field(description="purchase lines of the product in the basket")


class Basket(BaseModel):
    at: datetime = Field(description="when it was bought (a basket is the purchases of one moment)")
    products: List[BasketItem] = Field(description="the distinct products bought at that moment")


class HistoryResponse(BaseModel):
    user_id: Union[int, str]
    known: bool = Field(description="false for households the data does not have (their rankings are cold starts)")
    purchases: int = Field(description="purchase lines before at")
    baskets: List[Basket] = Field(description="the latest baskets before at, most recent first")
    at: datetime
    model_version: str


class ProductsRequest(_Strict):
    product_ids: Annotated[List[RawId], Field(min_length=1, max_length=MAX_PRODUCT_IDS)]


class ProductsResponse(BaseModel):
    products: List[Product] = Field(description="in request order")
    model_version: str


class HouseholdSearchRequest(_Strict):
    prefix: Annotated[StrictStr, Field(max_length=MAX_ID_CHARS, description="start of the ids ('' lists the first)")]
    limit: Annotated[int, Field(strict=True, ge=1, le=MAX_SEARCH_RESULTS)] = 10


class HouseholdSearchResponse(BaseModel):
    user_ids: List[Union[int, str]] = Field(description="household ids starting with prefix, in string order")
    model_version: str


# -- errors --------------------------------------------------------------------------------


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra})


def describe_errors(errors) -> str:
    """Pydantic errors -> one line: ``body.k: Input should be less than or equal to 100; ...``."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Only loc/msg/type: the raw errors can hold exception objects that JSON cannot encode.
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
    return _error(422, describe_errors(exc.errors()), detail=detail)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


async def _on_unknown_products(request: Request, exc: UnknownProducts) -> JSONResponse:
    return _error(422, str(exc), unknown_product_ids=exc.product_ids)


async def _on_not_ready(request: Request, exc: NotReady) -> JSONResponse:
    return _error(503, str(exc))


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before any parsing.

    The declared Content-Length is checked first; a chunked body is read up to the limit and
    then replayed to the application, so nothing larger than the limit is ever buffered.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        messages, size = [], 0
        while True:  # ends at the last body chunk, at a disconnect, or past the limit
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _too_large(self, scope, receive, send) -> None:
        response = _error(413, f"request body larger than {self.max_bytes} bytes")
        await response(scope, receive, send)


def create_app() -> FastAPI:
    """The FastAPI application, with the error handlers and the body size limit."""
    app = FastAPI(
        title="AdvancedNCF recommendations",
        description="Top-K products for users at a moment, batch ranking and scoring, from one "
        'model directory. Errors are JSON {"error": message}.',
        version="1",
    )
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(UnknownProducts, _on_unknown_products)
    app.add_exception_handler(NotReady, _on_not_ready)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    return app
