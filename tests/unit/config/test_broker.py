"""config/broker.py: the crash-safe file-system transport (kombu issue #1551).

Plain kombu, no Django: each test gets its own broker folder under tmp_path.
"""

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport import resolve_transport
from kombu.transport.virtual import BrokerState

from config import broker
from config.broker import Transport

QUEUE = "jobs"


def connect(folder: Path) -> Connection:
    """A connection configured like settings.py does (plus a control folder in tmp)."""
    return Connection(
        transport=Transport,
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.01,
        },
    )


def jobs_queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)


def message_files(folder: Path, queue: str = QUEUE) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(f".{queue}.msg"))


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(autouse=True)
def fresh_broker_state(monkeypatch):
    """kombu keeps declared bindings process-wide and then skips writing the binding table
    into a new control folder; give each test its own state, as a new process would have."""
    monkeypatch.setattr(Transport, "global_state", BrokerState())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "broker"
    path.mkdir()
    return path


def test_alias_in_celery_config_resolves_to_this_transport():
    import config.celery  # noqa: F401  (registers TRANSPORT_ALIASES["leadrelay-fs"])

    assert resolve_transport("leadrelay-fs") is Transport
    assert Connection("leadrelay-fs://").transport_cls == "leadrelay-fs"


def test_round_trip_in_order_and_leaves_no_files(folder: Path):
    bodies = [{"n": 1}, "naïve ünïcode", [1, 2, 3], {"nested": {"x": None}}, 42]
    with connect(folder) as conn:
        q = conn.SimpleQueue(jobs_queue())
        for body in bodies:
            q.put(body, serializer="json")
        assert len(message_files(folder)) == len(bodies)
        assert hidden_files(folder) == []

        received = []
        for _ in bodies:
            message = q.get(timeout=2)
            received.append(message.payload)
            message.ack()
        with pytest.raises(q.Empty):
            q.get(timeout=0.1)
        q.close()

    assert received == bodies
    assert message_files(folder) == []
    assert hidden_files(folder) == []
    assert not (folder / broker.CORRUPT_FOLDER).exists()


def test_message_is_invisible_until_completely_written(folder: Path, monkeypatch):
    """The #1551 race, made deterministic: look at the folder while a put is mid-way."""
    real_replace = os.replace
    seen = []

    with connect(folder) as producer, connect(folder) as consumer:
        channel = consumer.default_channel
        producer.SimpleQueue(jobs_queue()).close()  # declare outside the hook

        def replace_while_consumer_looks(src, dst):
            # The payload is fully on disk, under a hidden name only.
            assert Path(src).name.startswith(".") and Path(src).stat().st_size > 0
            with pytest.raises(broker.Empty):
                channel._get(QUEUE)
            seen.append((channel._size(QUEUE), channel._purge(QUEUE)))
            real_replace(src, dst)

        monkeypatch.setattr(broker.os, "replace", replace_while_consumer_looks)
        with producer.Producer(serializer="json") as p:
            p.publish({"n": 1}, exchange=QUEUE, routing_key=QUEUE)
        monkeypatch.undo()

        assert seen == [(0, 0)]  # neither counted nor purged while in flight
        assert channel._size(QUEUE) == 1
        assert channel.basic_get(QUEUE, no_ack=True).payload == {"n": 1}


def test_consumer_losing_the_claim_race_moves_on(folder: Path, monkeypatch):
    with connect(folder) as conn:
        q = conn.SimpleQueue(jobs_queue())
        q.put({"n": 1})
        q.put({"n": 2})
        first = message_files(folder)[0]
        real_rename = os.rename
        claims = []

        def someone_else_claims_first(src, dst):
            claims.append((Path(src).parent, Path(dst).parent, Path(dst).name))
            if Path(src).name == first:  # another consumer renamed it a moment earlier
                real_rename(src, str(src) + ".elsewhere")
            real_rename(src, dst)

        monkeypatch.setattr(broker.os, "rename", someone_else_claims_first)
        message = conn.default_channel.basic_get(QUEUE, no_ack=True)
        monkeypatch.undo()
        q.close()

    assert message.payload == {"n": 2}
    # claimed by renaming inside the queue folder, to a hidden name
    assert [(s, d) for s, d, _ in claims] == [(folder, folder), (folder, folder)]
    assert all(name.startswith(".") and name.endswith(".claimed") for *_, name in claims)
    assert message_files(folder) == []


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"body": "eyJ", "properties": {"deliv', id="half-written"),
        pytest.param(b"\xff\xfe not utf-8", id="binary"),
        pytest.param(b'{"__type__": "nope", "__value__": 1}', id="bad-kombu-json"),
        pytest.param(b"[1, 2, 3]", id="json-not-a-message"),
        pytest.param(b'{"properties": {}}', id="no-delivery-tag"),
    ],
)
def test_corrupt_file_is_moved_aside_and_consumption_continues(
    folder: Path, caplog: pytest.LogCaptureFixture, content: bytes
):
    with connect(folder) as conn:
        q = conn.SimpleQueue(jobs_queue())
        q.put({"n": 1})
        # sorts before every real (time-ns) name: the consumer meets it first
        bad = f"{0:020d}_bad.jobs.msg"
        (folder / bad).write_bytes(content)

        with caplog.at_level(logging.ERROR, logger="config.broker"):
            message = q.get(timeout=2)
            message.ack()
            with pytest.raises(q.Empty):
                q.get(timeout=0.1)
        q.close()

    assert message.payload == {"n": 1}
    assert (folder / broker.CORRUPT_FOLDER / bad).read_bytes() == content
    assert message_files(folder) == []
    assert hidden_files(folder) == []
    errors = [r for r in caplog.records if r.name == "config.broker"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert bad in errors[0].getMessage()


def test_size_and_purge_ignore_hidden_and_other_queues(folder: Path):
    with connect(folder) as conn:
        jobs = conn.SimpleQueue(jobs_queue())
        other = conn.SimpleQueue("other")
        for n in range(3):
            jobs.put({"n": n})
        other.put({"n": "other"})
        name = message_files(folder)[0]
        # an in-flight put, a claimed-but-not-yet-deleted message, and a set-aside file
        (folder / broker.temp_name(name)).write_text("{}")
        (folder / broker.claimed_name(name)).write_text("{}")
        (folder / broker.CORRUPT_FOLDER).mkdir()
        (folder / broker.CORRUPT_FOLDER / name).write_text("")

        assert jobs.qsize() == 3
        assert other.qsize() == 1
        assert jobs.clear() == 3
        assert jobs.qsize() == 0
        assert other.qsize() == 1
        assert other.get(timeout=1).payload == {"n": "other"}
        jobs.close()
        other.close()

    assert len(hidden_files(folder)) == 2  # purge does not touch other processes' files
    assert (folder / broker.CORRUPT_FOLDER / name).exists()


# --- stress: several producer and consumer processes on one folder -----------------------

PRODUCERS, PER_PRODUCER, CONSUMERS = 4, 800, 4


def _produce(folder: str, start: int, count: int) -> int:
    with connect(Path(folder)) as conn, conn.Producer(serializer="json") as producer:
        for n in range(start, start + count):
            producer.publish({"n": n}, exchange=QUEUE, routing_key=QUEUE)
    return count


def _consume(folder: str, done_marker: str) -> list[int]:
    received: list[int] = []

    def on_message(body, message):
        received.append(body["n"])
        message.ack()

    with connect(Path(folder)) as conn, conn.Consumer(jobs_queue(), callbacks=[on_message]):
        while True:
            # Producers had all finished before the marker was made, so an empty poll
            # window that started after seeing it means every message was claimed.
            done = os.path.exists(done_marker)
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                if done:
                    return received


def test_concurrent_producers_and_consumers_get_every_message_exactly_once(
    folder: Path, tmp_path: Path
):
    with connect(folder) as conn:
        conn.SimpleQueue(jobs_queue()).close()  # declare the exchange/binding once
    done_marker = tmp_path / "producers-done"
    ctx = multiprocessing.get_context("spawn")

    with ProcessPoolExecutor(PRODUCERS + CONSUMERS, mp_context=ctx) as pool:
        consumers = [pool.submit(_consume, str(folder), str(done_marker)) for _ in range(CONSUMERS)]
        producers = [
            pool.submit(_produce, str(folder), i * PER_PRODUCER, PER_PRODUCER)
            for i in range(PRODUCERS)
        ]
        assert sum(f.result(timeout=60) for f in producers) == PRODUCERS * PER_PRODUCER
        done_marker.touch()
        # .result() re-raises anything a consumer raised (stock kombu: JSONDecodeError)
        per_consumer = [f.result(timeout=60) for f in consumers]

    received = sorted(n for got in per_consumer for n in got)
    assert received == list(range(PRODUCERS * PER_PRODUCER))  # all of them, once each
    assert sum(1 for got in per_consumer if got) > 1  # the consumers really competed
    assert message_files(folder) == []
    assert hidden_files(folder) == []
    assert not (folder / broker.CORRUPT_FOLDER).exists()
