"""MQTT (3.1.1) over aiomqtt: one connection that subscribes, validates, dispatches and
publishes (:class:`MqttLink`, an async context manager).

Reconnecting, one strategy (DEPENDENCIES.md): one ``aiomqtt.Client`` object for the link's life
and a loop of ``async with client:`` that, after a failure, waits a capped exponential backoff
with jitter. After every (re)connect the link subscribes again and republishes its retained
status; the broker publishes the last will (the status with ``offline``/``OFFLINE``/
``stopped``) when the connection dies without a goodbye. A fault is logged once at ERROR, its
repeats at DEBUG.

Receiving: every message on a subscribed topic is validated against the subscription's model
(:func:`drivers.payloads.parse`, with the receiver's wall clock) as it arrives, in the socket's
read callback (aiomqtt's ``queue_type`` hook: no queue, no task per message). A valid one is
handed to the subscription's handler, synchronously, in arrival order: a handler must not block
(it updates a store; anything slow goes through a queue of the caller's); an invalid one is
dropped, counted by reason in :attr:`MqttCounters.rejected`, and logged once per fault (per
subscription and reason) until a valid message arrives on that subscription. A handler that
raises is a bug: it stops the link, and :meth:`MqttLink.__aexit__` and :meth:`MqttLink.wait`
raise it.

Publishing while disconnected (aiomqtt queues nothing), the rule:

* :meth:`MqttLink.publish` (commands, acks: QoS 1 by default) raises
  :class:`~drivers.errors.NotConnected` at once and sends nothing: the caller decides (the
  controller does not retry a cap command blindly; it reissues a fresh one with a new ``seq``).
  A QoS 1 publish waits for the broker's PUBACK up to ``publish_timeout_s``
  (:class:`~drivers.errors.DeviceTimeout`).
* :meth:`MqttLink.publish_telemetry` (QoS 0) drops the message, counts it in
  :attr:`MqttCounters.dropped` and returns False: the next period's telemetry supersedes it.
* The retained status is republished on every reconnect, so a change made while disconnected
  (:meth:`MqttLink.publish_status` returns False) is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from drivers._link import Backoff, FaultLog, LinkState, StatefulLink, stop_task
from drivers.errors import (
    AuthenticationFailed,
    DeviceTimeout,
    DeviceUnreachable,
    DriverConfigError,
    DriverError,
    NotAllowed,
    NotConnected,
    PayloadError,
)
from drivers.payloads import Payload, dumps, parse

__all__ = [
    "MqttConfig",
    "MqttCounters",
    "MqttLink",
    "StatusSpec",
    "Subscription",
    "TlsConfig",
    "TopicAllowlist",
    "tls_context",
    "topic_matches",
]

_log = logging.getLogger(__name__)
_ROUTE_CACHE_MAX = 200_000
_SUBSCRIBE_BATCH = 256
_PENDING_CALLS_WARNING = 10_000


@dataclass(frozen=True, slots=True)
class TopicAllowlist:
    """The topics a link may publish to: exact topics and topic prefixes (each prefix ends in
    ``/``). :meth:`MqttLink.publish` refuses any other topic with
    :class:`~drivers.errors.NotAllowed` before anything is sent; the link's own status topic
    is always allowed. The controller builds one from the config's bindings (the agents'
    ``caps/set`` topics)."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for topic in (*self.exact, *self.prefixes):
            if not topic or any(c in topic for c in "+#\0"):
                raise DriverConfigError(f"an allowlisted topic needs no wildcards, got "
                                        f"{topic!r}")
        for prefix in self.prefixes:
            if not prefix.endswith("/"):
                raise DriverConfigError(f"an allowlisted topic prefix ends in '/', got "
                                        f"{prefix!r}")

    def allows(self, topic: str) -> bool:
        return topic in self.exact or any(topic.startswith(p) for p in self.prefixes)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS to the broker: CA bundle (None: the system's), client certificate and key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False       # skip hostname and certificate checks (test rigs only)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Where the broker is and how to talk to it. Validated on construction."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None
    keepalive_s: int = 10
    connect_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        def bad(message: str) -> DriverConfigError:
            return DriverConfigError(message, device=f"{self.host}:{self.port}")

        if not self.host:
            raise bad("host must not be empty")
        if not 1 <= self.port <= 65535:
            raise bad(f"port must be 1–65535, got {self.port}")
        if not 1 <= self.keepalive_s <= 3600:
            raise bad("keepalive_s must be 1–3600")
        for name in ("connect_timeout_s", "publish_timeout_s", "backoff_initial_s",
                     "backoff_max_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise bad(f"{name} must be a positive number, got {value!r}")
        if self.backoff_initial_s > self.backoff_max_s:
            raise bad("backoff_initial_s must not exceed backoff_max_s")
        if self.password is not None and self.username is None:
            raise bad("a password needs a username")

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> MqttConfig:
        """``mqtt://[user[:password]@]host[:port]`` (1883) or ``mqtts://...`` (TLS, 8883)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise DriverConfigError(f"expected mqtt://host[:port] or mqtts://host[:port], "
                                    f"got {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise DriverConfigError(f"bad port in {url!r}") from exc
        tls = parts.scheme == "mqtts"
        kwargs: dict[str, Any] = {
            "host": parts.hostname,
            "port": port or (8883 if tls else 1883),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "tls": TlsConfig() if tls else None,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


Handler = Callable[[str, Any], None]


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter (``+``/``#`` allowed), the payload model its messages must fit, and the
    handler that gets ``(topic, payload)`` for each valid one."""

    topic: str
    model: type[Payload]
    handler: Handler
    qos: int = 0

    def __post_init__(self) -> None:
        if not self.topic or "\0" in self.topic or self.qos not in (0, 1, 2):
            raise DriverConfigError(f"bad subscription {self.topic!r} (qos {self.qos})")
        levels = self.topic.split("/")
        for k, level in enumerate(levels):
            if ("#" in level and (level != "#" or k != len(levels) - 1)) or \
                    ("+" in level and level != "+"):
                raise DriverConfigError(f"bad wildcard in {self.topic!r}")


@dataclass(frozen=True, slots=True)
class StatusSpec:
    """A retained status: ``online()`` is published (QoS 1, retained) after every connect and
    by :meth:`MqttLink.publish_status`; ``offline()`` is the last will and the goodbye."""

    topic: str
    online: Callable[[], Payload]
    offline: Callable[[], Payload]


@dataclass
class MqttCounters:
    """Monotonic counters of one link (for metrics)."""

    received: int = 0
    accepted: int = 0
    unmatched: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    published: int = 0
    publish_failures: int = 0
    #: publishes refused by the link's allowlist (nothing sent)
    publish_refused: int = 0
    dropped: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 topic filter matching (``+`` one level, ``#`` the rest)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for k, f in enumerate(f_levels):
        if f == "#":
            return not (k == 0 and topic.startswith("$"))
        if k >= len(t_levels):
            return False
        if f == "+":
            if k == 0 and t_levels[0].startswith("$"):
                return False
            continue
        if f != t_levels[k]:
            return False
    return len(f_levels) == len(t_levels)


#: CONNACK codes of refused credentials: MQTT 3.1.1 (4, 5) and their MQTT 5 reason codes
#: (134 bad user name or password, 135 not authorized), which paho 2 reports for both.
_AUTH_CODES = frozenset({4, 5, 134, 135})


def _connect_error(exc: aiomqtt.MqttError, config: MqttConfig) -> DriverError:
    """Our error for a failed connect or a lost connection (a refused login or TLS handshake
    is :class:`AuthenticationFailed`)."""
    text = str(exc)
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(exc, MqttConnectError) and code in _AUTH_CODES:
        who = f"user {config.username!r}" if config.username else "an anonymous client"
        return AuthenticationFailed(f"the broker refused the credentials of {who} ({text})",
                                    device=config.name)
    if config.tls is not None and ("SSL" in text or "certificate" in text.lower()):
        return AuthenticationFailed(f"TLS handshake failed ({text})", device=config.name)
    return DeviceUnreachable(text, device=config.name)


MessageQueue = type["asyncio.Queue[aiomqtt.Message]"]
ClientFactory = Callable[[MqttConfig, "aiomqtt.Will | None", MessageQueue], aiomqtt.Client]


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho-mqtt 2.2 drops a socket whose handshake
    failed without closing it (a file descriptor and a ResourceWarning per attempt, and the
    link retries forever against a broker with another CA)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except BaseException:
            self.close()
            raise


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client's TLS context: the CA bundle (None: the system's), hostname and certificate
    checks (off only with ``insecure``), TLS 1.2 or newer, the client certificate if given.
    Raises ``OSError``/``ssl.SSLError`` for files that cannot be loaded."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.sslsocket_class = _ClosingSSLSocket
    return context


def aiomqtt_client(config: MqttConfig, will: aiomqtt.Will | None,
                   queue_type: MessageQueue) -> aiomqtt.Client:
    """The default factory: one ``aiomqtt.Client`` (MQTT 3.1.1, clean session)."""
    client = aiomqtt.Client(
        config.host, config.port, identifier=config.client_id, username=config.username,
        password=config.password, will=will, keepalive=config.keepalive_s,
        timeout=config.connect_timeout_s, clean_session=True,
        tls_context=None if config.tls is None else tls_context(config.tls),
        queue_type=queue_type,
        tls_insecure=config.tls.insecure if config.tls is not None else None,
    )
    # Concurrent publishes (a batch of telemetry) are intended: no warning per pending call.
    client.pending_calls_threshold = _PENDING_CALLS_WARNING
    return client


class MqttLink(StatefulLink):
    """One MQTT connection: subscriptions with validation, publishing, a retained status.

    ::

        subs = [Subscription("rampguard/agents/+/telemetry", AgentTelemetry, on_telemetry)]
        async with MqttLink(config, subscriptions=subs, status=status) as link:
            await link.wait_connected(5.0)
            await link.publish(topics.caps_set, command)         # QoS 1, raises if down

    Entering starts the connection loop and returns at once. ``clock`` is the wall clock used
    to check payload timestamps (Unix s); ``rng`` the backoff jitter; ``client_factory`` makes
    the one ``aiomqtt.Client``; ``on_connect`` is awaited after every (re)connect, once the
    subscriptions and the status are in place and before the link reports CONNECTED (it may
    publish; listeners are not told of the state until it returns). ``on_close`` is awaited by
    :meth:`aclose` while the link is still connected, just before its own status goes offline
    (it may publish: the simulated agents say offline). ``allowed_topics``: when given,
    :meth:`publish` refuses every other topic (:class:`~drivers.errors.NotAllowed`).

    A close that comes while a connect is under way on a live session (subscribing, publishing
    the status, running ``on_connect``) first lets that connect finish, within
    ``connect_timeout_s + publish_timeout_s``: the status, and whatever ``on_connect``
    published, may be on the broker already, retained, and only a goodbye after it undoes it.

    A connect the broker refuses for its credentials, or whose TLS handshake fails, is an
    :class:`~drivers.errors.AuthenticationFailed` in :attr:`last_error` (logged once at ERROR;
    the link keeps retrying with its backoff, since a broker's password file can be fixed
    while the controller runs); :meth:`wait_connected` names the last error when it times out.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        subscriptions: Sequence[Subscription] = (),
        status: StatusSpec | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        client_factory: ClientFactory = aiomqtt_client,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        allowed_topics: TopicAllowlist | None = None,
    ) -> None:
        self.config = config
        self._allowed = allowed_topics
        #: why the last connect attempt or connection failed (None once connected)
        self.last_error: DriverError | None = None
        self._on_connect = on_connect
        self._on_close = on_close
        self._in_hook = False
        #: inside ``async with client`` (the broker accepted the connection), connected or not
        self._session_up = False
        self.counters = MqttCounters()
        self._subs = tuple(subscriptions)
        self._exact = {s.topic: s for s in self._subs if "+" not in s.topic and "#" not in s.topic}
        self._wild = [s for s in self._subs if s.topic not in self._exact]
        self._route_cache: dict[str, Subscription | None] = {}
        self._status = status
        self._clock = clock
        self._factory = client_factory
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s,
                                rng=rng or random.Random())  # noqa: S311 (jitter)
        self._faults = FaultLog(_log, f"mqtt {config.name}")
        self._client: aiomqtt.Client | None = None
        self._failure: Exception | None = None
        self._failed = asyncio.Event()
        self._init_state()
        self._runner: asyncio.Task[None] | None = None
        #: set by :meth:`aclose`; the connection loop stops on it as well as on the cancellation
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._state is not LinkState.IDLE:
            raise RuntimeError("an MqttLink is entered once")
        will = None
        if self._status is not None:
            will = aiomqtt.Will(self._status.topic, dumps(self._status.offline()), qos=1,
                                retain=True)
        dispatch = self._dispatch

        class _DispatchQueue(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's ``queue_type``: each message is validated and handed on as it
            arrives, in the socket's reader callback; aiomqtt's iterator would otherwise
            spawn a task and an ``asyncio.wait`` per message, most of the ingest cost."""

            def put_nowait(self, item: aiomqtt.Message) -> None:
                dispatch(item)

        self._client = self._factory(self.config, will, _DispatchQueue)
        self._runner = asyncio.create_task(self._run(), name=f"mqtt {self.config.name}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        failure = await self.aclose()
        if failure is not None and exc is None:
            raise failure

    async def aclose(self) -> BaseException | None:
        """Let a connect under way finish, say goodbye (``on_close``, then the offline status)
        if connected, disconnect, stop. Returns the failure that stopped the link early, if
        any."""
        runner, self._runner = self._runner, None
        try:
            await self._settle(runner)
            self._closing = True        # after the connect phase: the goodbye still goes out
            if self._state is LinkState.CONNECTED and self._client is not None:
                if self._on_close is not None:
                    await self._on_close()
                if self._status is not None:
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        async with asyncio.timeout(self.config.publish_timeout_s):
                            await self._client.publish(self._status.topic,
                                                       dumps(self._status.offline()), qos=1,
                                                       retain=True)
        finally:
            self._closing = True
            failure = await stop_task(runner)
            # aiomqtt 2.5 starts its housekeeping task from paho's socket-open callback through
            # call_soon_threadsafe; a socket the broker closes at once (a refused login) can
            # close before that task exists, so nothing cancels it and it lives on for up to a
            # second
            await asyncio.sleep(0)                  # let a pending create_misc_task run
            misc = getattr(self._client, "_misc_task", None)
            if isinstance(misc, asyncio.Task) and not misc.done():
                misc.cancel()
                await asyncio.gather(misc, return_exceptions=True)
            self._set_state(LinkState.CLOSED)
        return failure

    async def _settle(self, runner: asyncio.Task[None] | None) -> None:
        """Wait while ``runner`` is in the connect phase of a live session (its status, and
        what ``on_connect`` published, may be on the broker already, retained), at most
        ``connect_timeout_s + publish_timeout_s``: a goodbye sent meanwhile could be overtaken
        by the rest of the hello, and one skipped would leave the hello standing (found with
        `sim serve` stopped just after its agents said online)."""
        if runner is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.connect_timeout_s
                                       + self.config.publish_timeout_s):
                while (self._session_up and self._state is LinkState.CONNECTING
                       and not runner.done()):
                    changed = asyncio.create_task(self._changed.wait())
                    try:
                        await asyncio.wait((changed, runner),
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        changed.cancel()
                        await asyncio.gather(changed, return_exceptions=True)

    async def wait(self) -> None:
        """Return when the link stops (only by a failure, which is raised here)."""
        if self._runner is not None:
            await asyncio.shield(self._runner)

    # -- state (drivers._link.StatefulLink) ---------------------------------------------------
    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until connected and subscribed (:class:`DeviceTimeout` after ``timeout_s``,
        naming the last connect error)."""
        try:
            await self._wait_for_connected(timeout_s, self.config.name)
        except DeviceTimeout as exc:
            if self.last_error is None:
                raise
            raise DeviceTimeout(f"not connected within {timeout_s} s: {self.last_error.message}",
                                device=self.config.name) from exc

    async def wait_disconnected(self, timeout_s: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while self._state is LinkState.CONNECTED:
                    await self._changed.wait()
        except TimeoutError:
            raise DeviceTimeout(f"still connected after {timeout_s} s",
                                device=self.config.name) from None

    # -- the connection loop -----------------------------------------------------------------
    async def _run(self) -> None:
        # The loop ends on ``_closing`` as well as on the cancellation. On Python 3.11 the
        # ``asyncio.wait_for`` inside aiomqtt's connect and subscribe swallows a cancellation
        # that lands as the awaited answer arrives, and a disconnect whose acknowledgement times
        # out raises an MqttError that replaces it: either way the loop would connect again and
        # wait for messages with nobody left to cancel it.
        client = self._client
        assert client is not None
        while not self._closing:
            self._set_state(LinkState.CONNECTING)
            connected = False
            try:
                async with client:
                    self._session_up = True
                    try:
                        await self._connect_phase(client)
                        if self._closing:
                            return
                        connected = True
                        self.last_error = None
                        self.counters.connects += 1
                        self._faults.recovered("connect")
                        self._faults.recovered("lost")
                        self._backoff.reset()
                        self._set_state(LinkState.CONNECTED)
                        await self._until_disconnected_or_failed(client)
                    finally:
                        self._session_up = False
            except aiomqtt.MqttError as exc:
                error = _connect_error(exc, self.config)
                self.last_error = error
                if connected:
                    self.counters.disconnects += 1
                    self._faults.fault("lost", "connection lost: %s", error.message)
                else:
                    self.counters.connect_failures += 1
                    self._faults.fault("connect", "cannot connect: %s", error.message)
            if self._closing:
                return
            self._set_state(LinkState.BACKOFF)
            await asyncio.sleep(self._backoff.next_s())

    async def _connect_phase(self, client: aiomqtt.Client) -> None:
        """On a fresh session: subscribe, publish the status, run ``on_connect``."""
        subs = [(s.topic, s.qos) for s in self._subs]
        for k in range(0, len(subs), _SUBSCRIBE_BATCH):
            await client.subscribe(subs[k:k + _SUBSCRIBE_BATCH])
        if self._status is not None:
            await client.publish(self._status.topic, dumps(self._status.online()),
                                 qos=1, retain=True)
        if self._on_connect is not None:
            self._in_hook = True        # the hook may publish before CONNECTED
            try:
                await self._on_connect()
            finally:
                self._in_hook = False

    async def _until_disconnected_or_failed(self, client: aiomqtt.Client) -> None:
        """Messages are dispatched as they arrive (see ``_DispatchQueue``); wait here until
        the connection drops (aiomqtt.MqttError) or a handler fails (its exception)."""

        async def disconnected() -> None:
            async for _ in client.messages:      # never yields: the queue hands on at once
                pass

        waiter = asyncio.create_task(disconnected(), name="mqtt connection")
        failed = asyncio.create_task(self._failed.wait(), name="mqtt handler failure")
        try:
            await asyncio.wait((waiter, failed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            failed.cancel()
            await asyncio.gather(waiter, failed, return_exceptions=True)
        if self._failure is not None:
            raise self._failure
        lost = None if waiter.cancelled() else waiter.exception()
        if lost is not None:
            raise lost

    def _route(self, topic: str) -> Subscription | None:
        sub = self._exact.get(topic)
        if sub is not None:
            return sub
        try:
            return self._route_cache[topic]
        except KeyError:
            pass
        found = next((s for s in self._wild if topic_matches(s.topic, topic)), None)
        if len(self._route_cache) >= _ROUTE_CACHE_MAX:
            self._route_cache.clear()
        self._route_cache[topic] = found
        return found

    def _dispatch(self, message: aiomqtt.Message) -> None:
        counters = self.counters
        counters.received += 1
        topic = message.topic.value
        sub = self._route(topic)
        if sub is None:
            counters.unmatched += 1
            return
        data = message.payload
        if not isinstance(data, bytes | bytearray | str):
            data = b"" if data is None else str(data).encode()
        try:
            payload = parse(sub.model, data, now_s=self._clock(), topic=topic)
        except PayloadError as exc:
            counters.rejected[exc.reason] = counters.rejected.get(exc.reason, 0) + 1
            self._faults.fault(f"payload {sub.topic} {exc.reason}", "rejected on %s: %s",
                               topic, exc.message)
            return
        counters.accepted += 1
        if self._faults.active:
            for reason in tuple(counters.rejected):
                self._faults.recovered(f"payload {sub.topic} {reason}")
        if self._failure is not None:
            return                                   # stopping: a handler failed before
        try:
            sub.handler(topic, payload)
        except Exception as exc:
            # A bug in a consumer: stop the link with it (raising here would only look like a
            # lost connection to paho and aiomqtt).
            self._failure = exc
            self._failed.set()

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, topic: str, payload: Payload | bytes, *, qos: int = 1,
                      retain: bool = False) -> None:
        """Publish now, or raise: :class:`NotConnected` while disconnected (nothing is sent or
        queued), :class:`DeviceTimeout` when a QoS 1 publish gets no PUBACK in time,
        :class:`DeviceUnreachable` when the connection fails under it."""
        if (self._allowed is not None and not self._allowed.allows(topic)
                and (self._status is None or topic != self._status.topic)):
            self.counters.publish_refused += 1
            raise NotAllowed("the allowlist does not name this topic; nothing sent",
                             target=topic, device=self.config.name, topic=topic)
        data = payload if isinstance(payload, bytes) else dumps(payload)
        client = self._client
        if client is None or not (self._state is LinkState.CONNECTED or self._in_hook):
            self.counters.publish_failures += 1
            raise NotConnected(f"not connected ({self._state.value}); nothing sent",
                               device=self.config.name, topic=topic)
        try:
            await client.publish(topic, data, qos=qos, retain=retain,
                                 timeout=self.config.publish_timeout_s)
        except aiomqtt.MqttCodeError as exc:
            self.counters.publish_failures += 1
            raise NotConnected(f"publish failed: {exc}", device=self.config.name,
                               topic=topic) from exc
        except aiomqtt.MqttError as exc:
            self.counters.publish_failures += 1
            if "timed out" in str(exc):
                raise DeviceTimeout(f"no PUBACK within {self.config.publish_timeout_s} s",
                                    device=self.config.name, topic=topic) from exc
            raise DeviceUnreachable(f"publish failed: {exc}", device=self.config.name,
                                    topic=topic) from exc
        self.counters.published += 1

    async def publish_telemetry(self, topic: str, payload: Payload | bytes) -> bool:
        """QoS 0, fire and forget: False (dropped and counted) while disconnected."""
        if not (self._state is LinkState.CONNECTED or self._in_hook):
            self.counters.dropped += 1
            return False
        try:
            await self.publish(topic, payload, qos=0)
        except (NotConnected, DeviceUnreachable, DeviceTimeout):
            self.counters.dropped += 1
            return False
        return True

    async def publish_status(self) -> bool:
        """Publish ``status.online()`` now (retained, QoS 1); False while disconnected (it is
        republished on reconnect anyway)."""
        if self._status is None:
            raise DriverConfigError("this link has no status", device=self.config.name)
        try:
            await self.publish(self._status.topic, self._status.online(), qos=1, retain=True)
        except (NotConnected, DeviceUnreachable, DeviceTimeout):
            return False
        return True
