"""The GitLab API token's scopes, checked before the stack changes anything in GitLab.

`create_runner` alone creates runners but cannot read, update or delete them (GitLab answers 403
insufficient_scope to `GET/PUT/DELETE /runners/:id`; `manage_runner` exists since GitLab 17.1): with it,
`pulumi refresh`, every attribute change and `pulumi destroy` would fail and leave runners behind.
So `pulumi up` asks GitLab which scopes the token has (`GET /api/v4/personal_access_tokens/self`) and
stops, naming the missing ones, before the first runner is created. Where GitLab cannot say (an
older instance, another kind of token) it warns and goes on. The question is asked from a worker
thread while the program goes on (`checked_token_meanwhile`): only what needs the token waits for the
answer. A preview asks nothing (components/providers.py).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import NamedTuple

import pulumi

NEEDED = ({"create_runner", "manage_runner"}, {"api"})
NEEDED_TEXT = "create_runner and manage_runner (or api)"


class TokenInfo(NamedTuple):
    """What GitLab says about the token, or why it could not."""

    status: int
    scopes: frozenset[str] = frozenset()
    error: str | None = None


def fetch_token_info(gitlab_url: str, token: str, timeout: float = 10) -> TokenInfo:
    request = urllib.request.Request(  # noqa: S310 - the stack's own GitLab URL, http(s) by validation
        f"{gitlab_url}/api/v4/personal_access_tokens/self", headers={"PRIVATE-TOKEN": token}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = json.loads(response.read() or b"{}")
            scopes = body.get("scopes") if isinstance(body, dict) else None
            return TokenInfo(response.status, frozenset(str(s) for s in scopes or ()))
    except urllib.error.HTTPError as error:
        return TokenInfo(error.code, error=f"HTTP {error.code}")
    except (OSError, ValueError) as error:
        return TokenInfo(0, error=str(error))


def missing_scopes(scopes: frozenset[str]) -> str | None:
    """None when the scopes suffice; else what to add, in words."""
    if any(needed <= scopes for needed in NEEDED):
        return None
    lacking = sorted(NEEDED[0] - scopes)
    return f"it has {', '.join(sorted(scopes)) or 'no scope'}, it needs {NEEDED_TEXT} (missing: {', '.join(lacking)})"


def checked_token(gitlab_url: str, token: str) -> str:
    """The token, once GitLab confirms its scopes; raises naming the fix otherwise."""
    return judged_token(gitlab_url, token, fetch_token_info(gitlab_url, token))


async def checked_token_meanwhile(gitlab_url: str, token: str) -> str:
    """`checked_token`, with GitLab asked from a worker thread: the event loop goes on registering the
    resources that do not need the token (the image, the volumes) while GitLab answers, where a blocking
    call would hold every one of them for the round trip. The verdict (its warning or its error) is
    given back on the event loop."""
    info = await asyncio.get_running_loop().run_in_executor(None, fetch_token_info, gitlab_url, token)
    return judged_token(gitlab_url, token, info)


def judged_token(gitlab_url: str, token: str, info: TokenInfo) -> str:
    """The token, if GitLab's answer `info` shows the scopes it needs; raises naming the fix otherwise."""
    if info.status == 401:
        raise pulumi.RunError(
            f"gitlab:token is not accepted by {gitlab_url} (401): expired, revoked or mistyped. "
            f"Create one with the scopes {NEEDED_TEXT}, then: pulumi config set --secret gitlab:token"
        )
    if info.status != 200:
        pulumi.log.warn(
            f"could not check the scopes of gitlab:token at {gitlab_url} ({info.error}); "
            f"it needs {NEEDED_TEXT}, or destroy and refresh fail"
        )
        return token
    problem = missing_scopes(info.scopes)
    if problem:
        raise pulumi.RunError(
            f"gitlab:token cannot manage the runners this stack creates: {problem}. With create_runner "
            "alone, GitLab refuses to read, change or remove runners, so refresh and destroy would fail "
            "and leave runners behind. Add the scopes (or use a new token), then: "
            "pulumi config set --secret gitlab:token"
        )
    return token
