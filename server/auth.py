"""Who is calling: the tenant of the request's bearer token.

With no tokens configured, authentication is off and every caller is the
empty tenant. The tenant is carried in a context variable set by the auth
interceptor for the duration of the RPC handler.
"""

from __future__ import annotations

import contextvars

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("mediagen_tenant", default="")
