"""The start-up check that the cascading credentials are glance admin."""

from __future__ import annotations

import threading

import pytest
from glanceclient import exc

from coordinator import admincheck
from glancesync.exceptions import ConfigError, GlanceError


class Client:
    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []
        self.http_client = self

    def get(self, url: str):
        self.asked.append(url)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer, {}


def test_admin_answer_is_true() -> None:
    client = Client(object())
    assert admincheck.check(client, "http://c") is True
    assert client.asked == ["/v2/tasks?limit=1"]


@pytest.mark.parametrize("error", [exc.HTTPForbidden("no"), exc.HTTPUnauthorized("who?")])
def test_forbidden_or_unauthorized_is_definite(error) -> None:
    with pytest.raises(ConfigError):
        admincheck.check(Client(error), "http://c")


def test_no_tasks_api_cannot_tell() -> None:
    assert admincheck.check(Client(exc.HTTPNotFound("gone")), "http://c") is False


def test_an_unreachable_glance_is_tried_again_until_it_answers(monkeypatch) -> None:
    client = Client(exc.CommunicationError("refused"), exc.HTTPServiceUnavailable("busy"), object())
    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return False

    assert admincheck.wait_until_checked(lambda: admincheck.check(client, "http://c"), Stop(), "http://c")
    assert len(client.asked) == 3 and waits == [admincheck.FIRST_DELAY, admincheck.FIRST_DELAY * 2]


def test_a_stop_while_waiting_ends_the_wait() -> None:
    stop = threading.Event()

    def probe():
        stop.set()
        raise GlanceError(endpoint="http://c", detail="down", retryable=True)

    assert admincheck.wait_until_checked(probe, stop, "http://c") is False


def test_not_admin_reaches_the_caller() -> None:
    with pytest.raises(ConfigError):
        admincheck.wait_until_checked(lambda: admincheck.check(Client(exc.HTTPForbidden("no")), "c"),
                                      threading.Event(), "c")
