"""Who is calling, and what they may do: bearer JWTs checked as an OAuth2 resource server
checks them, and one guard per role.

Authentication (``BearerTokens``, under ``Authenticate``, a leaner Starlette
``AuthenticationMiddleware``): every request's ``Authorization: Bearer …`` becomes a
``Caller`` in ``scope["user"]`` before the fast paths and the routes run, so both read the
same one.

- ``AUTH_MODE=jwt``: a JWT whose signature (HS256 with AUTH_SIGNING_KEY, or the identity
  provider's RS256/ES256 keys from AUTH_JWKS_URL, chosen by the token's ``kid``), issuer,
  audience, expiry (with leeway) and subject check out is its subject with its role; the
  ADMIN_TOKEN, when set, is an admin; anything else is a caller with an ``error`` (a guard
  answers 401 with it; an open route ignores it).
- ``AUTH_MODE=off`` (the seed's behaviour): every caller is ``OPEN``, the staff role with no
  subject (orders have no owner), and the ADMIN_TOKEN alone opens ``/admin/*``.

Authorisation (``Access``): a route needing a role depends on that role's ``Guard``; its fast
path (web/hot.py) calls the same guard, and ``check_fast_paths`` refuses a route whose guard
its fast path does not share. Roles are ranked, each may do what the one below may:

======== ==========================================================================
customer create orders; read and cancel its own (another's order is 404)
staff    products, stock adjustments, every order
admin    cache warm-up, dead letters
======== ==========================================================================

Which orders a caller sees is the order service's: ``Caller.owner`` is the customer whose
orders it may see (None: every order).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any

import httpx
import jwt
import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from orderstack.config import Settings
from orderstack.web.errors import ServiceError

log = structlog.get_logger(__name__)

SECURITY_SCHEME = "BearerToken"
HMAC_ALGORITHM = "HS256"
# What an identity provider's key set may sign with (never ``none``, never HMAC: a public
# key must not double as a shared secret).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
_CACHED_TOKENS = 4096  # checked tokens kept (by their text) until they expire


class Role(IntEnum):
    """A caller's role, ranked: each may do what the ones below may."""

    CUSTOMER = 1
    STAFF = 2
    ADMIN = 3

    @property
    def claim(self) -> str:
        """The role as a token names it (``customer``, ``staff``, ``admin``)."""
        return self.name.lower()

    @classmethod
    def named(cls, value: object) -> Role | None:
        """The role a claim names (a string, or a list: the highest known), else None."""
        names = value if isinstance(value, list) else [value]
        known = [
            cls[n.upper()] for n in names if isinstance(n, str) and n.upper() in cls.__members__
        ]
        return max(known, default=None)


@dataclass(frozen=True, slots=True)
class Caller(BaseUser):
    """Who is calling: the token's subject and role; no role when no valid token came
    (``error`` says why, when one came)."""

    subject: str | None
    role: Role | None
    error: str | None = None

    @property
    def is_authenticated(self) -> bool:
        return self.role is not None

    @property
    def display_name(self) -> str:
        return self.subject or ""

    @property
    def owner(self) -> str | None:
        """The customer whose orders alone this caller may see and change; None: every
        order (staff and admin, or auth off)."""
        return self.subject if self.role is Role.CUSTOMER else None


ANONYMOUS = Caller(None, None)
# AUTH_MODE=off: anyone may do what staff may, as in the seed; no order has an owner.
OPEN = Caller(None, Role.STAFF)
INVALID_ADMIN_TOKEN = Caller(None, Role.STAFF, "invalid admin token")
ADMIN_BY_TOKEN = Caller("admin-token", Role.ADMIN)


def caller_of(scope: Scope) -> Caller:
    """The request's caller, as ``BearerTokens`` found it."""
    caller = scope.get("user")
    return caller if isinstance(caller, Caller) else ANONYMOUS


class InvalidToken(Exception):
    """A bearer token that does not check out; the message says why (never the token)."""


class TokenVerifier:
    """Checks a JWT's signature, issuer, audience, expiry (with ``leeway``) and subject,
    and reads its role. Keys: ``(kid, key)`` HMAC pairs (the token's ``kid`` picks one; a
    token without one is checked with the first), and/or an identity provider's key set at
    ``jwks_url``, fetched at ``start()`` and again for an unknown ``kid`` (at most every
    ``refresh`` seconds, so a stream of forged kids cannot make it fetch in a loop).
    A token checked once is kept, by its text, until it expires (a client sends the same
    one again and again)."""

    def __init__(
        self,
        *,
        hmac_keys: Sequence[tuple[str, bytes]] = (),
        jwks_url: str | None = None,
        issuer: str,
        audience: str,
        leeway: float = 30.0,
        role_claim: str = "role",
        refresh: float = 30.0,
    ) -> None:
        if not hmac_keys and not jwks_url:
            raise ValueError("a verifier needs AUTH_SIGNING_KEY or AUTH_JWKS_URL")
        self._hmac = dict(hmac_keys)
        self._first_hmac = hmac_keys[0][1] if hmac_keys else None
        self._jwks_url, self._refresh = jwks_url, refresh
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._issuer, self._audience, self._leeway = issuer, audience, leeway
        self._role_claim = role_claim
        self._checked: dict[str, tuple[Caller, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(
            hmac_keys=settings.signing_keys,
            jwks_url=settings.AUTH_JWKS_URL,
            issuer=settings.AUTH_ISSUER,
            audience=settings.AUTH_AUDIENCE,
            leeway=settings.AUTH_LEEWAY_SECONDS,
            role_claim=settings.AUTH_ROLE_CLAIM,
            refresh=settings.AUTH_JWKS_REFRESH_SECONDS,
        )

    async def start(self) -> None:
        """Fetch the key set now (a provider that does not answer is logged; its tokens
        are refused until a later fetch succeeds)."""
        if self._jwks_url:
            await self._fetch_jwks()

    async def caller(self, token: str) -> Caller:
        """The token's subject and role. Raises InvalidToken."""
        now = time.time()
        kept = self._checked.get(token)
        if kept is not None and now < kept[1] + self._leeway:
            return kept[0]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        key, algorithms = await self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token not issued for this audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token not from the expected issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        subject, role = claims["sub"], Role.named(claims.get(self._role_claim))
        if not isinstance(subject, str) or not 0 < len(subject) <= 255:
            raise InvalidToken("the token's subject is not a string of 1 to 255 characters")
        if role is None:
            raise InvalidToken(f"the token names no known role in {self._role_claim!r}")
        caller = Caller(subject, role)
        if len(self._checked) >= _CACHED_TOKENS:  # the oldest checked goes (insertion order)
            del self._checked[next(iter(self._checked))]
        self._checked[token] = (caller, float(claims["exp"]))
        return caller

    async def _key_for(self, header: dict[str, Any]) -> tuple[Any, list[str]]:
        kid, alg = header.get("kid"), header.get("alg")
        if alg == HMAC_ALGORITHM and self._hmac:
            key = self._hmac.get(kid) if isinstance(kid, str) else self._first_hmac
            if key is None:
                raise InvalidToken("unknown key id")
            return key, [HMAC_ALGORITHM]
        if self._jwks_url and alg in ASYMMETRIC_ALGORITHMS and isinstance(kid, str):
            found = self._jwks.get(kid)
            if found is None and time.monotonic() - self._fetched_at >= self._refresh:
                await self._fetch_jwks()  # a rotated key the provider published since
                found = self._jwks.get(kid)
            if found is None:
                raise InvalidToken("unknown key id")
            return found, [alg]
        raise InvalidToken("token signed with an algorithm or key this service does not take")

    async def _fetch_jwks(self) -> None:
        assert self._jwks_url is not None
        self._fetched_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                answer = await client.get(self._jwks_url)
                answer.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(answer.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            log.warning("the key set could not be fetched", url=self._jwks_url, error=str(exc))
            return
        self._jwks = {k.key_id: k for k in keys.keys if k.key_id}
        log.info("key set fetched", url=self._jwks_url, kids=sorted(self._jwks))


def mint(
    settings: Settings, subject: str, role: Role, *, ttl: float = 3600.0, now: float | None = None
) -> str:
    """A token for ``subject`` with ``role``, signed with the first AUTH_SIGNING_KEY (its
    kid in the header), of this service's issuer and audience, valid ``ttl`` seconds.
    Raises ValueError when no signing key is configured (a key set's private keys are the
    identity provider's)."""
    keys = settings.signing_keys
    if not keys:
        raise ValueError("no AUTH_SIGNING_KEY to sign with")
    kid, key = keys[0]
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": subject,
        settings.AUTH_ROLE_CLAIM: role.claim,
        "iss": settings.AUTH_ISSUER,
        "aud": settings.AUTH_AUDIENCE,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl),
    }
    return jwt.encode(claims, key, algorithm=HMAC_ALGORITHM, headers={"kid": kid})


class ServiceToken:
    """The ``Authorization`` header of this service's own calls to another (the order
    service reading a closed catalog): a token it signs for ``subject`` with ``role``,
    signed again once half its ``ttl`` has passed."""

    def __init__(
        self,
        settings: Settings,
        subject: str,
        role: Role = Role.STAFF,
        *,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.signing_keys:
            raise ValueError("a service token needs AUTH_SIGNING_KEY")
        self._settings, self._subject, self._role = settings, subject, role
        self._ttl, self._clock = ttl, clock
        self._header, self._renew_at = "", float("-inf")

    def __call__(self) -> str:
        now = self._clock()
        if now >= self._renew_at:
            token = mint(self._settings, self._subject, self._role, ttl=self._ttl, now=now)
            self._header, self._renew_at = f"Bearer {token}", now + self._ttl / 2
        return self._header


class BearerTokens(AuthenticationBackend):
    """The backend of Starlette's ``AuthenticationMiddleware``: the request's caller
    (never raises: a guard decides what a missing or bad token means)."""

    def __init__(self, verifier: TokenVerifier | None, admin_token: str | None = None) -> None:
        """``verifier`` None: AUTH_MODE=off."""
        self._verifier = verifier
        self._admin = admin_token.encode() if admin_token else None

    @property
    def default_caller(self) -> Caller:
        """The caller of a request without an ``Authorization`` header."""
        return ANONYMOUS if self._verifier is not None else OPEN

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        caller = await self.caller(conn.headers.get("authorization"))
        return _credentials(caller), caller

    async def caller(self, authorization: str | None) -> Caller:
        token = _bearer(authorization)
        admin = self._admin
        if token is not None and admin is not None and hmac.compare_digest(token.encode(), admin):
            return ADMIN_BY_TOKEN
        if self._verifier is None:  # auth off: the ADMIN_TOKEN is the only credential
            return OPEN if token is None else INVALID_ADMIN_TOKEN
        if token is None:
            if authorization:
                return Caller(None, None, "expected `Authorization: Bearer <token>`")
            return ANONYMOUS
        try:
            return await self._verifier.caller(token)
        except InvalidToken as exc:
            return Caller(None, None, str(exc))


class Authenticate:
    """Raw ASGI middleware: the request's caller in ``scope["user"]`` (and its role in
    ``scope["auth"]``), as Starlette's ``AuthenticationMiddleware`` puts them, so
    ``request.user`` reads it. Starlette's builds an ``HTTPConnection`` and awaits the
    backend on every request (2.5 µs, 4 % of a cached ``GET /products/{id}``); this one
    looks through the header list once and awaits the backend only when an
    ``Authorization`` header came (0.3 µs without)."""

    def __init__(self, app: ASGIApp, backend: BearerTokens) -> None:
        self.app, self._backend = app, backend
        self._default = backend.default_caller
        self._default_auth = _credentials(self._default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            for key, value in scope["headers"]:
                if key == b"authorization":
                    caller = await self._backend.caller(value.decode("latin-1"))
                    scope["user"], scope["auth"] = caller, _credentials(caller)
                    break
            else:
                scope["user"], scope["auth"] = self._default, self._default_auth
        await self.app(scope, receive, send)


def _credentials(caller: Caller) -> AuthCredentials:
    return AuthCredentials([caller.role.claim] if caller.role is not None else [])


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# Declared to OpenAPI as an HTTP bearer scheme, so the guarded routes carry it in
# ``/openapi.json`` and ``/docs`` has an Authorize button; the guard answers itself.
_bearer_scheme = HTTPBearer(
    scheme_name=SECURITY_SCHEME,
    bearerFormat="JWT",
    description="A JWT of this service's issuer and audience (`orderstack token`), or the "
    "ADMIN_TOKEN.",
    auto_error=False,
)
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]


class Guard:
    """A route's dependency, and its fast path's check: the caller holds ``role`` or
    better. 401 (with ``WWW-Authenticate``) without a valid token, 403 with a role too low."""

    def __init__(self, role: Role, *, jwt_mode: bool, admin_token_set: bool) -> None:
        self.role = role
        self._jwt_mode, self._admin_token_set = jwt_mode, admin_token_set

    def check(self, caller: Caller) -> None:
        """Raises ServiceError unless ``caller`` may pass."""
        if caller.role is not None and caller.role >= self.role:
            return
        if not self._jwt_mode:  # auth off: only admin routes are guarded, by the ADMIN_TOKEN
            if not self._admin_token_set:
                raise ServiceError(
                    403, "FORBIDDEN", "admin routes are disabled: no ADMIN_TOKEN set"
                )
            if caller.error:
                raise ServiceError(403, "FORBIDDEN", caller.error)
            raise ServiceError(
                401,
                "UNAUTHORIZED",
                "admin token required (Authorization: Bearer)",
                {"WWW-Authenticate": "Bearer"},
            )
        if caller.role is None:
            reason = caller.error or "a bearer token is required (Authorization: Bearer)"
            challenge = 'Bearer error="invalid_token"' if caller.error else "Bearer"
            raise ServiceError(401, "UNAUTHORIZED", reason, {"WWW-Authenticate": challenge})
        raise ServiceError(
            403,
            "FORBIDDEN",
            f"the {self.role.claim} role is required; this token has {caller.role.claim}",
        )

    async def __call__(self, request: Request, credentials: _Credentials) -> None:
        self.check(caller_of(request.scope))


def depends_on(guard: Guard | None) -> list[Any]:
    """A route's dependencies for ``guard``: none for an open route."""
    return [Depends(guard)] if guard is not None else []


@dataclass(frozen=True)
class Access:
    """The guards of one service, from the settings: ``customer``, ``staff``, ``admin``,
    and ``catalog``. None is an open route: with AUTH_MODE=off every route but the admin
    ones (so the document declares no bearer scheme it does not ask for), and the
    catalog's reads unless AUTH_PUBLIC_CATALOG=false."""

    customer: Guard | None
    staff: Guard | None
    admin: Guard
    catalog: Guard | None
    backend: BearerTokens
    verifier: TokenVerifier | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        jwt_mode = settings.auth_mode == "jwt"
        admin_token = settings.ADMIN_TOKEN.get_secret_value() if settings.ADMIN_TOKEN else None
        admin_token = admin_token or None  # an empty one is none
        verifier = TokenVerifier.from_settings(settings) if jwt_mode else None

        def guard(role: Role) -> Guard:
            return Guard(role, jwt_mode=jwt_mode, admin_token_set=admin_token is not None)

        customer = guard(Role.CUSTOMER) if jwt_mode else None
        return cls(
            customer=customer,
            staff=guard(Role.STAFF) if jwt_mode else None,
            admin=guard(Role.ADMIN),
            catalog=None if settings.AUTH_PUBLIC_CATALOG else customer,
            backend=BearerTokens(verifier, admin_token),
            verifier=verifier,
        )


__all__ = [
    "ANONYMOUS",
    "OPEN",
    "Access",
    "Authenticate",
    "BearerTokens",
    "Caller",
    "Guard",
    "InvalidToken",
    "Role",
    "ServiceToken",
    "TokenVerifier",
    "caller_of",
    "depends_on",
    "mint",
]
