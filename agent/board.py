"""The live venue board (`venue-agent board`): a web page fed by Server-Sent Events.

The server is the only MQTT client: it subscribes to the venue with paho (through
:class:`agent.console.MqttFeed`, so TLS, client certificates, username/password and MQTT 5
work as for the staff console), folds every message into a :class:`agent.console.ConsoleState`
and pushes a JSON snapshot of what the board shows to every open page on ``/events``
(``text/event-stream``, event ``state``). The page uses the browser's ``EventSource`` and has
no MQTT code. Routes:

- ``/``          the staff/guest board: zones (posted wait, queue, forecast, trend), open
                 moments, current nudges
- ``/signage``   large wait times only (guest-facing screens)
- ``/events``    the SSE stream; a snapshot on connect, then one per change (coalesced over
                 ``COALESCE_S``), a comment every ``HEARTBEAT_S`` to keep proxies open
- ``/state.json`` the current snapshot (for scripts and debugging)
- ``/static/…``  the page's JavaScript and CSS (``agent/static``)

Threading: paho's thread only calls ``loop.call_soon_threadsafe``; the state lives on the
aiohttp event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from importlib.resources import files
from typing import Any

from aiohttp import web

from agent.console import ConsoleState, MqttFeed, broker_settings, client_id
from agent.topics import Topics

__all__ = ["Board", "run_board"]

log = logging.getLogger(__name__)

COALESCE_S = 0.1  # changes within this window go out as one snapshot
HEARTBEAT_S = 15.0
RESNAPSHOT_S = 5.0  # re-send when the snapshot changed by itself (a nudge expired)
STATIC = files("agent") / "static"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml"}


def _static(name: str) -> bytes:
    return (STATIC / name).read_bytes()


class Board:
    """The board's state, its subscribers (open pages) and the aiohttp application."""

    def __init__(self, broker_url: str, venue: str, *, username: str | None = None,
                 password_file: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 protocol: str = "auto") -> None:
        self.venue = venue
        self.settings = broker_settings(broker_url, client_id=client_id("board"),
                                        username=username, password_file=password_file,
                                        ca_file=ca_file, cert_file=cert_file,
                                        key_file=key_file, protocol=protocol)
        self.state = ConsoleState(broker=broker_url)
        self.pages: set[asyncio.Queue[str | None]] = set()  # None: the server is stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False
        self._last_sent = ""
        self.feed: MqttFeed | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def filters(self) -> list[str]:
        t = Topics(self.venue)
        # zone state, gateway status, moments and nudges; acks for "taken by" on moments
        return [f for f in t.console_filters() if "/dispatch/" not in f]

    # the MQTT side (paho's thread hands over) ---------------------------------------------

    def _from_paho(self, topic: str, payload: bytes) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply, topic, payload)

    def _connection_changed(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._changed)

    def _apply(self, topic: str, payload: bytes) -> None:
        self.state.apply_raw(topic, payload)
        self._changed()

    def _changed(self) -> None:
        if self.feed is not None:
            self.state.connected, self.state.last_error = self.feed.connected, \
                self.feed.last_error
        if not self._pending and self._loop is not None:
            self._pending = True
            self._loop.call_later(COALESCE_S, self._broadcast)

    def snapshot_json(self) -> str:
        snap = {"venue": self.venue, **self.state.snapshot()}  # "at" stays last
        return json.dumps(snap, separators=(",", ":"))

    def _broadcast(self, force: bool = True) -> None:
        self._pending = False
        data = self.snapshot_json()
        if not force and _without_at(data) == _without_at(self._last_sent):
            return
        self._last_sent = data
        for q in list(self.pages):
            if q.full():  # a slow page: it only needs the latest snapshot
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(data)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(RESNAPSHOT_S)
            if self.feed is not None:
                self.feed.poll()  # MQTT 5 -> 3.1.1 fall back, when needed
            self._broadcast(force=False)

    # the HTTP side --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._page("board.html"))
        app.router.add_get("/signage", self._page("signage.html"))
        app.router.add_get("/events", self._events)
        app.router.add_get("/state.json", self._state)
        app.router.add_get("/static/{name}", self._file)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    def _page(self, name: str) -> Any:
        async def handler(_req: web.Request) -> web.Response:
            return web.Response(body=_static(name), content_type="text/html", charset="utf-8")

        return handler

    async def _file(self, req: web.Request) -> web.Response:
        name = req.match_info["name"]
        suffix = name[name.rfind("."):] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in _TYPES:
            raise web.HTTPNotFound()
        try:
            body = _static(name)
        except (FileNotFoundError, IsADirectoryError):
            raise web.HTTPNotFound() from None
        return web.Response(body=body, content_type=_TYPES[suffix],
                            headers={"Cache-Control": "no-cache"})

    async def _state(self, _req: web.Request) -> web.Response:
        return web.Response(text=self.snapshot_json(), content_type="application/json")

    async def _events(self, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(req)
        q: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
        self.pages.add(q)
        try:
            await resp.write(b"retry: 2000\n\n")
            await resp.write(_event(self.snapshot_json()))
            while True:
                try:
                    data = await asyncio.wait_for(q.get(), HEARTBEAT_S)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if data is None:
                    break
                await resp.write(_event(data))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.pages.discard(q)
        return resp

    async def _startup(self, _app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self.feed = MqttFeed(self.settings, self.filters(), self._from_paho,
                             on_change=self._connection_changed)
        self.feed.start()
        self._tasks.append(asyncio.create_task(self._housekeeping()))

    async def _shutdown(self, _app: web.Application) -> None:
        for q in list(self.pages):  # end every open stream, so the server can stop
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
            q.put_nowait(None)

    async def _cleanup(self, _app: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        if self.feed is not None:
            await asyncio.to_thread(self.feed.stop)


def _event(data: str) -> bytes:
    return f"event: state\ndata: {data}\n\n".encode()


def _without_at(data: str) -> str:
    """A snapshot minus its own time stamp (so an unchanged board is not re-sent)."""
    i = data.rfind(',"at":')
    return data[:i] if i >= 0 else data


def run_board(broker_url: str, venue: str, *, host: str = "127.0.0.1", port: int = 8080,
              duration_s: float | None = None, **broker: Any) -> int:
    """Serve the board until Ctrl-C / SIGTERM (or ``duration_s``); ValueError for bad options."""
    board = Board(broker_url, venue, **broker)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if duration_s is not None:
            loop.call_later(duration_s, stop.set)
        runner = web.AppRunner(board.app(), shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        print(f"venue board for {venue} on http://{host}:{port}/ (signage: /signage), "
              f"broker {broker_url}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return 0
