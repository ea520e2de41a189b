"""CURVE security of the label stream: ``emim-stream keys``, key files, and a CURVE publisher on 127.0.0.1 that
serves authorised subscribers only (real ZeroMQ sockets, a real ZAP handler thread)."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import zmq
from zmq.auth import load_certificate

from emim_stream.cli.commands import keys as keys_cmd
from emim_stream.cli.commands import subscribe as subscribe_cmd
from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.curve import (
    CurveClient,
    CurveServer,
    load_authorized_keys,
    load_key_pair,
    load_public_key,
    write_key_pair,
)
from emim_stream.pipeline.comms.messages import LabelMessage, ModelInfo, WindowInfo, label_topic
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.errors import PublishError

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq is built without CURVE")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run_keys(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    keys_cmd.add_arguments(parser)
    return keys_cmd.main(parser.parse_args(list(argv)))


@pytest.fixture
def keyring(tmp_path: Path) -> dict[str, Path]:
    """A server pair, an authorised client 'alice' (her public key in clients/) and an unknown client 'mallory'."""
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    clients.mkdir()
    write_key_pair(keys, "server")
    for name in ("alice", "mallory"):
        write_key_pair(keys, name)
    (clients / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    return {"keys": keys, "clients": clients, "server_public": keys / "server.key"}


def _client(keyring: dict[str, Path], name: str) -> CurveClient:
    return CurveClient(keyring["keys"] / f"{name}.key_secret", keyring["server_public"])


def _server(keyring: dict[str, Path]) -> CurveServer:
    return CurveServer(keyring["keys"] / "server.key_secret", keyring["clients"])


# --- key files and `emim-stream keys` ----------------------------------------------------------------------


def test_keys_command_writes_a_usable_pair_with_safe_permissions(tmp_path, capsys):
    out = tmp_path / "new" / "keys"
    old_umask = os.umask(0)  # the most permissive umask must still give 0600
    try:
        assert _run_keys("--out", str(out), "--name", "cam-viewer") == 0
    finally:
        os.umask(old_umask)
    public, secret = out / "cam-viewer.key", out / "cam-viewer.key_secret"
    assert _mode(secret) == 0o600 and _mode(public) == 0o644 and _mode(out) == 0o700
    # pyzmq's own reader understands both files, and the secret key belongs to the public one
    public_key, no_secret = load_certificate(public)
    pair_public, secret_key = load_certificate(secret)
    assert no_secret is None and public_key == pair_public and zmq.curve_public(secret_key) == public_key
    assert load_key_pair(secret).secret_key == secret_key and load_public_key(public) == public_key
    text = capsys.readouterr().out
    assert public_key.decode() in text and secret_key.decode() not in text
    assert "curve_clients_dir" in text and "--curve-client-key" in text

    with pytest.raises(ConfigError, match="already exist.*--force"):
        _run_keys("--out", str(out), "--name", "cam-viewer")
    assert _run_keys("--out", str(out), "--name", "cam-viewer", "--force") == 0
    assert load_public_key(public) != public_key and _mode(secret) == 0o600
    assert _run_keys("--out", str(out)) == 0  # default name: the publisher's pair
    assert (out / "server.key_secret").exists() and "curve_secret_key_file" in capsys.readouterr().out


def test_bad_key_files_and_names_are_clear_errors(tmp_path, keyring):
    secret = keyring["keys"] / "alice.key_secret"
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600"):
        load_key_pair(secret)
    with pytest.raises(ConfigError, match=r"holds no secret key; pass the \.key_secret file"):
        load_key_pair(keyring["server_public"])
    with pytest.raises(ConfigError, match="cannot read CURVE"):
        load_key_pair(tmp_path / "missing.key_secret")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    with pytest.raises(ConfigError, match="not a CURVE certificate"):
        load_public_key(garbage)
    garbage.write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(ConfigError, match="not a 40-character Z85"):
        load_public_key(garbage)
    with pytest.raises(ConfigError, match="does not exist"):
        load_authorized_keys(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no authorised CURVE client key in .*emim-stream keys"):
        load_authorized_keys(tmp_path / "empty")
    assert load_authorized_keys([zmq.curve_keypair()[0]])
    with pytest.raises(ConfigError, match="not a valid Z85"):
        load_authorized_keys([b"#" * 40])  # Z85 characters, but each group decodes above 2**32
    for name in ("", "../up", "a/b", "x" * 65):
        with pytest.raises(ConfigError, match="key name"):
            write_key_pair(tmp_path, name)


# --- CURVE publisher --------------------------------------------------------------------------------------


def test_only_authorised_subscribers_receive_labels(keyring, caplog):
    caplog.set_level(logging.WARNING, logger="emim_stream.pipeline.comms.curve")
    with (
        Publisher("tcp://127.0.0.1:*", curve=_server(keyring)) as pub,
        Subscriber(pub.endpoint, curve=_client(keyring, "alice")) as alice,
        Subscriber(pub.endpoint) as anonymous,
        Subscriber(pub.endpoint, curve=_client(keyring, "mallory")) as mallory,
    ):
        assert pub.authenticates_clients
        got, refused_seen = [], False
        deadline = time.monotonic() + 10
        # until alice has 20 labels *and* both others were refused; the refused ones must get nothing throughout
        while len(got) < 20 or not refused_seen:
            assert time.monotonic() < deadline, (
                f"alice got {len(got)}; refusals {anonymous.handshake_failures}, {mallory.handshake_failures}"
            )
            pub.send(label_topic("cam1"), _LABEL)
            if (received := alice.recv(0.01)) is not None:
                got.append(received)
            assert anonymous.recv(0) is None and mallory.recv(0) is None
            refused_seen = anonymous.handshake_failures > 0 and mallory.handshake_failures > 0
        for _ in range(20):  # after the refusals, messages keep flowing to alice alone
            pub.send(label_topic("cam1"), _LABEL)
        tail = list(alice.iter_messages(count=20, total_timeout_s=5))
        assert anonymous.recv(0.2) is None and mallory.recv(0) is None
    assert [r.topic for r in got] == ["labels/cam1/"] * 20 and got[0].message.topk[0][0] == "wave"
    seqs = [r.msg_seq for r in got + tail]
    assert len(seqs) == 40 and seqs == list(range(seqs[0], seqs[0] + 40)) and alice.total_lost == 0
    assert anonymous.received == mallory.received == 0 and alice.handshake_failures == 0
    mallory_key = load_public_key(keyring["keys"] / "mallory.key").decode()
    assert any("refused a CURVE client" in r.message and mallory_key in r.message for r in caplog.records)


def test_wrong_server_key_is_refused(keyring):
    impostor = CurveClient(keyring["keys"] / "alice.key_secret", keyring["keys"] / "mallory.key")
    with Publisher("tcp://127.0.0.1:*", curve=_server(keyring)) as pub, Subscriber(pub.endpoint, curve=impostor) as sub:
        deadline = time.monotonic() + 5
        while sub.handshake_failures == 0:
            assert time.monotonic() < deadline, "the handshake with a wrong server key never failed"
            pub.send(b"labels/cam1/", {"x": 1})
            assert sub.recv(0.02) is None
        assert sub.received == 0


def test_oversize_cap_holds_over_curve(keyring):
    with (
        Publisher("tcp://127.0.0.1:*", curve=_server(keyring)) as pub,
        Subscriber(pub.endpoint, max_msg_bytes=1000, curve=_client(keyring, "alice")) as sub,
    ):
        _join(pub, sub)
        big_seq = pub.next_msg_seq(b"labels/cam1/")
        pub.send(b"labels/cam1/", {"blob": "x" * 5000})
        after = _join(pub, sub)  # encrypted again after the subscriber's own reconnect
    assert after.msg_seq > big_seq and "blob" not in after.payload and sub.disconnects == 1


def _join(pub: Publisher, sub: Subscriber, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.send(b"labels/cam1/", _LABEL)  # a valid message: the subscriber drops others
        if (received := sub.recv(0.02)) is not None:
            return received
    raise AssertionError("subscriber never joined")


def test_close_stops_the_authenticator_and_frees_the_context(keyring):
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:*", curve=_server(keyring), context=ctx)
    with pytest.raises(PublishError, match="another ZAP handler"):
        Publisher("tcp://127.0.0.1:*", curve=_server(keyring), context=ctx)
    pub.close()
    pub.close()
    assert not any(type(t).__name__ == "AuthenticationThread" for t in threading.enumerate())
    term = threading.Thread(target=ctx.term, daemon=True)  # hangs if any auth socket were left open
    term.start()
    term.join(5)
    assert not term.is_alive()


def test_conflicting_or_broken_curve_options(keyring, tmp_path):
    public, secret = zmq.curve_keypair()
    with pytest.raises(PublishError, match="not both"):
        Publisher("inproc://x", curve=_server(keyring), curve_secret_key=secret, curve_public_key=public)
    nobody = tmp_path / "nobody"
    nobody.mkdir()
    with pytest.raises(ConfigError, match="no authorised CURVE client key"):
        Publisher("inproc://x", curve=CurveServer(keyring["keys"] / "server.key_secret", nobody))
    with pytest.raises(ConfigError, match="holds no secret key"):
        Subscriber("inproc://x", curve=CurveClient(keyring["server_public"], keyring["server_public"]))


# --- emim-stream subscribe with CURVE ---------------------------------------------------------------------


def _subscribe_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    subscribe_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


_LABEL = LabelMessage(
    camera_id="cam1",
    window=WindowInfo(0, 7, 8, 4, 233.3),
    topk=(("wave", 0.9),),
    model=ModelInfo("emim_xs", "torch", "fp32", "cpu"),
    capture_mono_ns=1, capture_wall_ns=1, vmp_done_mono_ns=2, infer_start_mono_ns=3, infer_end_mono_ns=4,
    publish_mono_ns=5, publish_wall_ns=5, latency_ms={"total": 1.0},
).to_payload()


def test_subscribe_command_with_and_without_keys(keyring, capsys):
    with Publisher("tcp://127.0.0.1:*", curve=_server(keyring)) as pub:
        keyed = _subscribe_args(
            "--endpoint", pub.endpoint, "--count", "3", "--timeout", "10",
            "--curve-server-key", str(keyring["server_public"]),
            "--curve-client-key", str(keyring["keys"] / "alice.key_secret"),
        )  # fmt: skip
        bare = _subscribe_args("--endpoint", pub.endpoint, "--count", "1", "--timeout", "0.5")
        results: dict[str, int] = {}
        for name, args in (("keyed", keyed), ("bare", bare)):
            cli = threading.Thread(target=lambda a=args, n=name: results.update({n: subscribe_cmd.main(a)}))
            cli.start()
            while cli.is_alive():
                pub.send(b"labels/cam1/", _LABEL)  # the command counts payloads of another schema as malformed
                cli.join(0.02)
    assert results == {"keyed": 0, "bare": 1}
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("received 3,") and "refused" not in err[0]
    assert err[1].startswith("received 0,") and "refused handshakes" in err[1]
    half = _subscribe_args("--endpoint", "tcp://127.0.0.1:1", "--curve-server-key", str(keyring["server_public"]))
    with pytest.raises(ConfigError, match="both --curve-server-key and --curve-client-key"):
        subscribe_cmd.main(half)
