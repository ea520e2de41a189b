"""End to end with local HTTP servers: ``run`` POSTs its events to three webhooks, one that answers, one that answers
500 and one that hangs. The answering server gets exactly the events ZeroMQ published, in order; the other two cost
no label on ZeroMQ (no ``msg_seq`` gap) and every event they did not take is counted as dropped, in the status
messages and in ``run``'s summary."""

from __future__ import annotations

import re
import time

import pytest

from emim_stream.pipeline.comms.subscribe import Subscriber
from tests.http_hook import HookServer
from tests.integration.conftest import engine_section, free_port

pytestmark = pytest.mark.slow


def test_failing_and_hanging_webhooks_cost_no_label_and_their_drops_are_counted(pipeline_factory, record_property):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with HookServer("ok") as ok, HookServer("error") as error, HookServer("hang") as hang:
        config = {
            "cameras": [{"id": "cam1", "source": "synthetic://?seed=2&fps=15&size=64x48"}],
            "engine": engine_section(),
            "window": {"stride": 4},
            "postprocess": {"print_labels": False},
            "publish": {"endpoint": endpoint, "heartbeat_s": 0.5},
            # an untrained model: an event opens at once and stays open (an update every half second of video)
            # until another label takes over or the run stops
            "events": {"enter": 0.01, "exit": 0.0, "min_windows": 1, "update_s": 0.5},
            "webhook": {"urls": [ok.url + "/hook", error.url, hang.url], "phases": ["start", "update", "end"],
                        "retries": 1, "backoff_s": 0.1, "timeout_s": 1.0, "queue_size": 2},
        }  # fmt: skip
        p = pipeline_factory(config)
        events, labels, webhook_status = [], 0, []
        with Subscriber(endpoint, topics=(b"labels/", b"events/", b"status/"), timeout_s=1.0) as sub:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and p.proc.poll() is None:
                if len(events) >= 12 and webhook_status and webhook_status[-1]["dropped"] > 0:
                    break
                p.watch_children()
                got = sub.recv(0.5)
                if got is None:
                    continue
                kind = got.payload["kind"]
                if kind == "event":
                    events.append(got.payload)
                elif kind == "label":
                    labels += 1
                else:
                    webhook_status.append(got.payload["outputs"]["webhook"])
            assert p.terminate() == 0, p.output()[-3000:]
            while (got := sub.recv(1.0)) is not None:  # what the pipeline sent while stopping
                if got.payload["kind"] == "event":
                    events.append(got.payload)
            assert sub.total_lost == 0, sub.lost  # no label, status or event lost while the webhooks failed
        out = p.output()
    assert len(events) >= 12 and labels > 0, out[-3000:]
    assert [r.body for r in ok.requests] == events  # the answering server: every event, in order
    assert {r.path for r in ok.requests} == {"/hook"}
    assert webhook_status[-1]["state"] == "failing" and webhook_status[-1]["dropped"] > 0
    match = re.search(r"^webhook: (\d+) sent, (\d+) dropped", out, re.MULTILINE)
    assert match, out[-3000:]
    sent, dropped = map(int, match.groups())
    assert sent == len(ok.requests) and sent + dropped == 3 * len(events)  # each event sent to each URL or counted
    assert len(error.requests) >= 2 * 2  # tried and retried
    record_property("webhook_dropped", dropped)
    print(f"\nwebhooks: {len(events)} events; {sent} delivered, {dropped} dropped (500 and hanging servers), "
          f"{labels} labels on ZeroMQ without a gap")  # fmt: skip
