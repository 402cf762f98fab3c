"""The local server under the loads that matter to on-call: a client that stalls, a body that
lies about its length, a burst of shutdowns. Through real sockets on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reconciler.server.app import ApiSettings, BearerToken, create_app
from reconciler.server.inputs import MAX_BODY
from reconciler.server.local import serving
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD
from tests.api_transports import TOKEN, Http
from tests.test_apply import apply, desired, plan

HEADERS = f"Host: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:
    opened = LocalStore(tmp_path_factory.mktemp("api") / "state.db")
    apply(opened, plan(opened, desired()))
    yield opened
    opened.close()


@pytest.fixture
def port(store: LocalStore) -> Iterator[int]:
    settings = ApiSettings(lambda: LocalStore(store.path), BearerToken(lambda: TOKEN))
    settings.body_timeout = 3.0
    with serving(create_app(settings)) as bound:
        yield bound


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are (no client library to correct them) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head_part, _, rest = answer.partition(b"\r\n\r\n")
        for line in head_part.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                while len(rest) < int(line.split(b":")[1]):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
        answer = head_part + b"\r\n\r\n" + rest
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    return status, answer


def test_a_stalled_body_does_not_delay_anyone_else(port: int) -> None:
    stalled = socket.create_connection(("127.0.0.1", port))
    head = f"POST /emergency-shutdown HTTP/1.1\r\n{HEADERS}Content-Length: 200\r\n\r\n"
    stalled.sendall(head.encode() + b'{"reason": ')  # and then nothing
    try:
        client = Http(port)
        for _ in range(3):
            started = time.perf_counter()
            assert client.request("GET", "/health", token=None) == (200, {"status": "ok"})
            assert time.perf_counter() - started < 1.0, "the probe is not held up"
            assert client.request("GET", "/health/detail")[0] == 200, "nor are reads"
            time.sleep(0.3)
        stalled.settimeout(10)
        answer = stalled.recv(65536)
        assert answer.split(b" ", 2)[1] == b"408", "the stalled body times out, with an answer"
        assert b"the body did not arrive in time" in answer
    finally:
        stalled.close()


@pytest.mark.parametrize("length", ["-1", "+5", "0x10", "1e3", "99999999999999999999"])
def test_a_content_length_that_is_not_a_size_cannot_pass_the_limit(
    port: int, store: LocalStore, length: str
) -> None:
    head = f"POST /emergency-shutdown HTTP/1.1\r\n{HEADERS}Content-Length: {length}\r\n\r\n"
    status, _ = raw_request(port, head, b"x" * (4 * MAX_BODY))
    assert 400 <= status < 500
    assert store.read_overrides() is None


def test_a_body_without_a_length_is_cut_at_the_limit(port: int, store: LocalStore) -> None:
    head = f"POST /emergency-shutdown HTTP/1.1\r\n{HEADERS}Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 4096
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(64)) + b"0\r\n\r\n"
    status, answer = raw_request(port, head, body)
    assert status == 413
    assert f"at most {MAX_BODY} bytes".encode() in answer
    assert store.read_overrides() is None


def test_two_hundred_shutdowns_at_once_are_all_answered(port: int, store: LocalStore) -> None:
    body = json.dumps({"reason": "burst", "shutdown_by": "drill", "flags": ["vc_bedrock_live"]})

    def shut_down(_: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            connection.request("POST", "/emergency-shutdown", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    barrier = threading.Barrier(50)

    def at_once(i: int) -> int:
        if i < 50:
            barrier.wait()
        return shut_down(i)

    with ThreadPoolExecutor(max_workers=200) as pool:
        statuses = list(pool.map(at_once, range(200)))  # a reset would raise here
    assert set(statuses) <= {200, 429, 503}
    assert statuses.count(200) >= 150
    written = [e for e in store.read_audit(OVERRIDES_RECORD, limit=1000) if e["reason"] == "burst"]
    assert len(written) == statuses.count(200), "one audited write per answered shutdown"


def test_the_answers_name_no_server(port: int) -> None:
    status, answer = raw_request(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    headers = answer.split(b"\r\n\r\n")[0].lower()
    assert b"server:" not in headers
    assert b"python" not in headers


def test_the_command_serves_the_api(tmp_path: Path, store: LocalStore) -> None:
    """`breakglass serve` as an operator runs it: a real process, answering, then stopped."""
    import os
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    env = {**os.environ, "RECONCILER_API_TOKEN": TOKEN, "RECONCILER_STATE_PATH": str(store.path)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from reconciler.cli.breakglass import main; main()",
            "serve",
            "--port",
            str(free),
            "--root",
            str(tmp_path),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = Http(free)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.request("GET", "/health", token=None) == (200, {"status": "ok"})
                break
            except ConnectionRefusedError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        status, answer = client.request(
            "GET", "/feature-flags/status?flag=vc_bedrock_live&user_id=u-9"
        )
        assert (status, answer["flag"]) == (200, "vc_bedrock_live")
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert f"Serving on http://127.0.0.1:{free}" in err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [line["path"] for line in logged][-1] == "/feature-flags/status"
    assert "u-9" not in err


def test_headers_that_never_end_are_cut_off(store: LocalStore) -> None:
    settings = ApiSettings(lambda: LocalStore(store.path), BearerToken(lambda: TOKEN))
    with serving(create_app(settings), header_timeout=1.0) as bound:
        idle = socket.create_connection(("127.0.0.1", bound), timeout=10)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line, ever
        started = time.perf_counter()
        assert idle.recv(65536) == b"", "the server closed it"
        assert time.perf_counter() - started < 5
        idle.close()
        kept = socket.create_connection(("127.0.0.1", bound), timeout=10)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /health HTTP/1.1\r\n")  # the next request on it stalls
        started = time.perf_counter()
        while kept.recv(65536):
            pass
        assert time.perf_counter() - started < 5, "a kept-alive connection has the deadline too"
        kept.close()


class SlowWrites(LocalStore):
    """A store whose overrides writes take a while, as a throttled table's would."""

    def write_overrides(self, *args: object, **kwargs: object) -> None:
        time.sleep(0.3)
        super().write_overrides(*args, **kwargs)  # type: ignore[arg-type]


def test_queued_writes_do_not_hold_up_reads(store: LocalStore) -> None:
    settings = ApiSettings(lambda: SlowWrites(store.path), BearerToken(lambda: TOKEN))
    body = json.dumps({"reason": "queue", "shutdown_by": "drill", "flags": ["vc_bedrock_live"]})
    with serving(create_app(settings)) as bound:

        def write(_: int) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", bound, timeout=60)
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            connection.request("POST", "/emergency-shutdown", body=body, headers=headers)
            status = connection.getresponse().status
            connection.close()
            return status

        with ThreadPoolExecutor(max_workers=60) as pool:
            writes = [pool.submit(write, i) for i in range(60)]
            time.sleep(1.0)  # the writes are queued now, one in the store at a time
            started = time.perf_counter()
            status, _ = Http(bound).request("GET", "/feature-flags/status?flag=vc_bedrock_live")
            waited = time.perf_counter() - started
            assert status == 200
            assert waited < 2.0, f"a read waited {waited:.1f} s behind the writes"
            assert {w.result() for w in writes} <= {200, 503}
