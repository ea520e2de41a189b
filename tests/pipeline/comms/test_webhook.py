"""WebhookSink against a local HTTP(S) server: events arrive in order with the bearer token, a failing or hanging
server costs retries and counted drops but never blocks ``send``, HTTPS with a given CA, and Frigate's manual-event
API shape (create at start, end at end)."""

from __future__ import annotations

import logging
import time

import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.messages import EventMessage
from emim_stream.pipeline.comms.webhook import WebhookSink
from emim_stream.pipeline.config import WebhookConfig
from tests.http_hook import FRIGATE_CREATE_KEYS, HookServer
from tests.polling import wait_for

WALL = 1_767_225_600_000_000_000


def event(n: int, phase: str, label: str = "left", camera: str = "cam1") -> dict:
    return EventMessage(camera, f"{n:032x}", phase, label, 10, 40, 0, WALL, 1, WALL + 1_500_000_000, 0.9, 0.8, 30, 5,
                        "exit" if phase == "end" else None, msg_seq=n).to_payload()  # fmt: skip


def test_events_arrive_in_order_with_the_bearer_token(monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "t0ken")
    with HookServer() as server:
        cfg = WebhookConfig(urls=(server.url + "/hook",), token_env="HOOK_TOKEN", phases=("start", "update", "end"))
        with WebhookSink(cfg) as sink:
            sent = [event(0, "start"), event(0, "update"), event(0, "end")]
            assert all(sink.send(p) for p in sent)
            assert wait_for(lambda: sink.stats()["sent"] == 3), sink.stats()
            assert sink.stats() == {"state": "ok", "sent": 3, "dropped": 0, "queued": 0, "detail": ""}
        assert [(r.method, r.path, r.body) for r in server.requests] == [("POST", "/hook", p) for p in sent]
        assert {r.headers["authorization"] for r in server.requests} == {"Bearer t0ken"}
        assert {r.headers["content-type"] for r in server.requests} == {"application/json"}


def test_phases_not_configured_are_not_sent():
    with HookServer() as server, WebhookSink(WebhookConfig(urls=(server.url,))) as sink:
        assert not sink.send(event(0, "update"))
        assert sink.send(event(0, "start"))
        assert wait_for(lambda: sink.stats()["sent"] == 1)


def test_a_500_is_retried_with_backoff_then_dropped_and_counted(caplog):
    caplog.set_level(logging.INFO, logger="emim_stream.pipeline.comms.webhook")
    with HookServer("error") as server:
        cfg = WebhookConfig(urls=(server.url,), retries=2, backoff_s=0.2)
        with WebhookSink(cfg) as sink:
            sink.send(event(0, "start"))
            assert wait_for(lambda: sink.stats()["dropped"] == 1), sink.stats()
            stats = sink.stats()
            assert stats["state"] == "failing" and f"POST {server.url} answered HTTP 500" in stats["detail"]
            times = [r.mono_s for r in server.requests]
            assert len(times) == 3  # the request and two retries
            assert times[2] - times[1] >= 0.2 * 2 - 0.02  # backoff: at once, then 0.2 x 2
            server.set_mode("ok")
            sink.send(event(1, "start"))
            assert wait_for(lambda: sink.stats()["sent"] == 1)
            assert sink.stats()["state"] == "ok"
    assert "answered HTTP 500" in caplog.text and "delivering again" in caplog.text


def test_a_hanging_server_never_blocks_send_and_overflow_drops_the_oldest():
    with HookServer("hang") as server:
        cfg = WebhookConfig(urls=(server.url,), queue_size=3, retries=0, timeout_s=60)
        with WebhookSink(cfg) as sink:
            sink.send(event(0, "start"))
            assert server.wait_for(lambda r: len(r) == 1)  # the worker waits on the server now
            started = time.monotonic()
            for n in range(1, 11):
                assert sink.send(event(n, "start"))
            assert time.monotonic() - started < 0.05  # 10 sends while the server hangs
            stats = sink.stats()
            assert (stats["dropped"], stats["queued"]) == (7, 4)  # 3 queued + the one in flight
            assert "queue of 3 full" in stats["detail"]
            server.set_mode("ok")
            assert wait_for(lambda: sink.stats()["sent"] == 4), sink.stats()
        assert [r.body["msg_seq"] for r in server.requests] == [0, 8, 9, 10]  # the newest survive


def test_close_counts_what_a_hanging_server_still_holds():
    with HookServer("hang") as server:
        sink = WebhookSink(WebhookConfig(urls=(server.url,), retries=0, timeout_s=60)).start()
        sink.send(event(0, "start"))
        sink.send(event(1, "start"))
        assert server.wait_for(lambda r: len(r) == 1)
        started = time.monotonic()
        sink.close(flush_timeout_s=0.3)
        assert time.monotonic() - started < 2
        assert sink.stats() == {"state": "closed", "sent": 0, "dropped": 2, "queued": 0, "detail": ""}


def test_https_with_the_servers_ca_and_refused_without_it(tmp_path):
    with HookServer(tls_dir=tmp_path) as server:
        trusted = WebhookConfig(urls=(server.url,), ca_file=str(server.ca_file), retries=0)
        with WebhookSink(trusted) as sink:
            sink.send(event(0, "start"))
            assert wait_for(lambda: sink.stats()["sent"] == 1), sink.stats()
        untrusted = WebhookConfig(urls=(server.url,), retries=0)  # system CAs: the test CA is not among them
        with WebhookSink(untrusted) as sink:
            sink.send(event(0, "start"))
            assert wait_for(lambda: sink.stats()["dropped"] == 1), sink.stats()
            assert "CERTIFICATE_VERIFY_FAILED" in sink.stats()["detail"]
        assert len(server.requests) == 1


def test_frigate_format_creates_a_manual_event_at_start_and_ends_it_at_end():
    with HookServer("frigate") as server:
        with WebhookSink(WebhookConfig(urls=(server.url + "/",), format="frigate")) as sink:
            assert not sink.send(event(0, "update"))  # Frigate gets start and end only
            sink.send(event(0, "start", label="air drumming", camera="front_door"))
            sink.send(event(0, "end", label="air drumming", camera="front_door"))
            sink.send(event(1, "end"))  # its start never reached Frigate
            assert wait_for(lambda: sink.stats()["sent"] + sink.stats()["dropped"] == 3), sink.stats()
            stats = sink.stats()
        create, end = server.requests
        assert (create.method, create.path) == ("POST", "/api/events/front_door/air%20drumming/create")
        assert set(create.body) <= FRIGATE_CREATE_KEYS and create.body["duration"] is None
        assert create.body["include_recording"] is True and create.body["score"] == 0.9
        [(frigate_id, made)] = server.frigate_events.items()
        assert (end.method, end.path) == ("PUT", f"/api/events/{frigate_id}/end")
        assert (made["camera"], made["label"]) == ("front_door", "air drumming")
        assert made["end_time"] == pytest.approx((WALL + 1_500_000_000) / 1e9)
        assert (stats["sent"], stats["dropped"]) == (2, 1)
        assert f"event {1:032x} ended but its start never reached Frigate" in stats["detail"]


def test_a_token_variable_that_is_not_set_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="webhook.token_env: environment variable NO_SUCH_TOKEN is not set"):
        WebhookSink(WebhookConfig(urls=("http://127.0.0.1:9/",), token_env="NO_SUCH_TOKEN"))
    with pytest.raises(ConfigError, match="webhook.ca_file: '/no/such.pem' cannot be read"):
        WebhookSink(WebhookConfig(urls=("https://127.0.0.1:9/",), ca_file="/no/such.pem"))
