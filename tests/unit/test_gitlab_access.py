"""The API token's scope check, against the GitLab API double over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading

import pulumi
import pytest

from components import gitlab_access
from components.gitlab_access import checked_token, checked_token_meanwhile, fetch_token_info, missing_scopes
from tests.gitlab_double.server import serve
from tests.integration.local_cluster import free_port
from tests.unit.test_program import FAKE_API_TOKEN, run_program, stack_config

TOKEN = "glpat-scope-check-token"


@pytest.mark.parametrize(
    ("scopes", "ok"),
    [
        (("create_runner",), False),
        (("manage_runner",), False),
        (("create_runner", "manage_runner"), True),
        (("api",), True),
        (("read_api",), False),
    ],
)
def test_scopes_as_gitlab_reports_them(scopes: tuple[str, ...], ok: bool) -> None:
    with serve(TOKEN, scopes=scopes) as double:
        info = fetch_token_info(double.base_url, TOKEN)
        assert info.status == 200 and info.scopes == frozenset(scopes)
        if ok:
            assert checked_token(double.base_url, TOKEN) == TOKEN
        else:
            with pytest.raises(pulumi.RunError) as caught:
                checked_token(double.base_url, TOKEN)
            message = str(caught.value)
            assert "create_runner and manage_runner (or api)" in message and TOKEN not in message


def test_a_token_gitlab_refuses_is_named_without_echoing_it() -> None:
    with serve("glpat-the-real-one") as double, pytest.raises(pulumi.RunError) as caught:
        checked_token(double.base_url, TOKEN)
    assert "401" in str(caught.value) and TOKEN not in str(caught.value)


def test_an_unreachable_gitlab_only_warns() -> None:
    # A 127.0.0.1 port nothing listens on: the provider will say more when it tries.
    url = f"http://127.0.0.1:{free_port()}"
    assert fetch_token_info(url, TOKEN, timeout=2).status == 0
    assert checked_token(url, TOKEN) == TOKEN


def test_missing_scopes_wording() -> None:
    assert missing_scopes(frozenset({"api"})) is None
    assert "missing: manage_runner" in str(missing_scopes(frozenset({"create_runner"})))


def test_up_stops_before_any_runner_exists_with_a_create_only_token() -> None:
    config = {**stack_config("prod"), "gitlab:token": FAKE_API_TOKEN}
    result = run_program("prod", config=config, token_scopes=("create_runner",))
    assert "cannot manage the runners this stack creates" in (result["error"] or "")
    assert not [r for r in result["resources"] if r["typ"] == "gitlab:index/userRunner:UserRunner"]
    assert result["scope_checks"] == ["https://gitlab.example.com"]


def test_preview_checks_no_token() -> None:
    config = {**stack_config("prod"), "gitlab:token": FAKE_API_TOKEN}
    result = run_program("prod", config=config, token_scopes=("create_runner",), preview=True)
    assert result["error"] is None and "scope_checks" not in result


def test_up_goes_on_while_gitlab_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # GitLab answers only once the event loop has run something else: a check that held the loop for
    # the round trip would wait in vain.
    loop_was_free = threading.Event()
    waited: list[bool] = []

    def slow_answer(url: str, token: str, timeout: float = 10) -> gitlab_access.TokenInfo:
        waited.append(loop_was_free.wait(timeout=5))
        return gitlab_access.TokenInfo(200, frozenset({"api"}))

    monkeypatch.setattr(gitlab_access, "fetch_token_info", slow_answer)

    async def up() -> str:
        check = asyncio.ensure_future(checked_token_meanwhile("https://gitlab.example.com", TOKEN))
        await asyncio.sleep(0.01)
        loop_was_free.set()
        return await check

    assert asyncio.run(up()) == TOKEN
    assert waited == [True]
