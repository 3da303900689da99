"""MQTT bridge (aiomqtt): a server's frames out to a broker, style changes in.

Topics, for every session ``<s>`` of the hub (``prefix`` defaults to ``mm2face``):

========================  =========  ========  ====================================================
topic                     direction  QoS/ret   payload
========================  =========  ========  ====================================================
``mm2face/<s>/frames``    out        0 / no    one frame per message in ``frame_format``: the protocol's
                                               JSON ``frame`` (default), the 272-byte binary frame, or
                                               ARKit-52 (``arkit``: JSON with ``arkit`` + ``head_rot``;
                                               ``arkit-binary``: 268 bytes); see docs/protocol.md
``mm2face/<s>/status``    out        1 / yes   ``{"session", "state": "live"|"closed", "style",
                                               "guidance", "frames", "dropped", "frame_format"}``; the
                                               current state (``dropped``: this session's frames the
                                               bridge dropped); ARKit formats add ``arkit_names``,
                                               ``arkit_map``, ``head_rot_order`` as in ``subscribed``
``mm2face/<s>/style``     in         1         plain UTF-8 style text, or JSON
                                               ``{"text", "blend_s", "guidance"}``; an empty
                                               payload (deleting a retained style) is ignored
``mm2face/<s>/error``     out        0 / no    protocol ``error`` JSON for a bad style message
========================  =========  ========  ====================================================

Frames are QoS 0 and not retained: a late frame is worthless and a retained one would show a stale
face. Status is QoS 1 and retained, so a dashboard that connects later sees the current style.
Frames wait in a bounded queue; when the broker is slower than 25 fps x sessions the oldest are
dropped and counted (``dropped``), never blocking the stream.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging

from mm2face.realtime import protocol as P

log = logging.getLogger("mm2face.realtime")

TOPIC_FORBIDDEN = set("/+#\0")


def parse_host_port(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``"host"``, ``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        if not port.isdigit():
            raise ValueError(f"port must be a number, got {port!r} (use HOST[:PORT])")
        return host or "127.0.0.1", int(port)
    return text or "127.0.0.1", default_port


def style_from_payload(payload: bytes) -> P.Style:
    """An MQTT style payload (plain text or JSON object) -> validated :class:`protocol.Style`."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise P.ProtocolError(P.ErrorCode.BAD_MESSAGE, "style payload must be UTF-8 text", "style") from None
    obj = None
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
    if not isinstance(obj, dict):
        obj = {"text": text}
    obj = {**obj, "type": "style"}
    obj.pop("session", None)
    return P.parse_text(json.dumps(obj))


class MqttBridge:
    """Publish every session of ``hub`` to an MQTT broker and take style changes from it.

    Run with ``await bridge.run()`` (reconnects every ``retry_s`` until cancelled).
    """

    def __init__(self, hub, host: str = "127.0.0.1", port: int = 1883, prefix: str = "mm2face",
                 frame_format: str = "json", max_queue: int = 250, retry_s: float = 2.0):
        self.hub, self.host, self.port, self.prefix = hub, host, port, prefix.rstrip("/")
        if frame_format not in P.FRAME_FORMATS:
            raise ValueError(f"MQTT frame format must be one of {list(P.FRAME_FORMATS)}, got {frame_format!r}")
        hub.check_format(frame_format, "mqtt")              # ARKit needs a map for the model's head
        self.frame_format, self.retry_s = frame_format, retry_s
        self._format_fields = {}
        if frame_format in P.ARKIT_FORMATS:
            from mm2face.engine.arkit import standin_retarget
            self._format_fields = P.arkit_subscribed_fields(hub.arkit_retarget or standin_retarget())
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.dropped = 0                          # frames dropped, all sessions
        self.dropped_by: collections.Counter[str] = collections.Counter()   # session name -> frames dropped
        self.published = 0
        self.connected = asyncio.Event()
        for live in list(hub.sessions.values()):
            if live is not None:
                self._attach(live)
        hub.session_listeners.append(self._on_session)
        hub.status_listeners.append(self._publish_status)

    # -- hub side (called synchronously from the event loop) ----------------------------------

    def _topic_ok(self, name: str) -> bool:
        if TOPIC_FORBIDDEN & set(name):
            log.warning("session %r has characters MQTT topics cannot carry; not bridged", name)
            return False
        return True

    def _attach(self, live) -> None:
        if self._topic_ok(live.name) and self._on_frames not in live.listeners:
            live.listeners.append(self._on_frames)
            self._publish_status(live)

    def _on_session(self, live, created: bool) -> None:
        if created:
            self._attach(live)
        elif self._topic_ok(live.name):
            self._publish_status(live, state="closed")

    def _put(self, item, session: str | None = None) -> None:
        """Queue ``item``; a frame (``session`` given) is dropped when the queue is full, a status message
        makes room instead."""
        if self.queue.full():
            if session is None:
                self.queue.get_nowait()          # make room for a status message
            else:
                self.dropped += 1
                self.dropped_by[session] += 1
                return
        self.queue.put_nowait(item)

    def _on_frames(self, live, frames) -> None:
        topic = f"{self.prefix}/{live.name}/frames"
        for payload in P.FrameBatchEncoder(frames, self.hub.arkit_retarget).get(self.frame_format):
            self._put((topic, payload, 0, False), session=live.name)

    def _publish_status(self, live, state: str | None = None) -> None:
        if not self._topic_ok(live.name):
            return
        status = {"session": live.name, "state": state or ("closed" if live.closed else "live"),
                  "style": live.style, "guidance": live.guidance, "frames": live.frames_out,
                  "dropped": self.dropped_by.get(live.name, 0), "frame_format": self.frame_format,
                  **self._format_fields}
        self._put((f"{self.prefix}/{live.name}/status", json.dumps(status), 1, True))

    # -- broker side --------------------------------------------------------------------------

    async def run(self) -> None:
        import aiomqtt
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=None) as client:
                    await client.subscribe(f"{self.prefix}/+/style", qos=1)
                    for live in list(self.hub.sessions.values()):
                        if live is not None:
                            self._publish_status(live)
                    self.connected.set()
                    log.info("MQTT bridge connected to %s:%d", self.host, self.port)
                    pub = asyncio.create_task(self._publisher(client))
                    try:
                        async for message in client.messages:
                            await self._on_message(client, message)
                    finally:
                        pub.cancel()
            except aiomqtt.MqttError as e:
                self.connected.clear()
                log.warning("MQTT broker %s:%d: %s; retrying in %.0f s", self.host, self.port, e, self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def _publisher(self, client) -> None:
        while True:
            topic, payload, qos, retain = await self.queue.get()
            await client.publish(topic, payload, qos=qos, retain=retain)
            self.published += 1

    async def _on_message(self, client, message) -> None:
        parts = str(message.topic).split("/")
        if len(parts) != 3 or parts[2] != "style":
            return
        name = parts[1]
        payload = bytes(message.payload or b"")
        if not payload:
            return                                    # deleting a retained style; {"text": ""} sets neutral
        live = self.hub.sessions.get(name)
        try:
            if live is None:
                raise P.ProtocolError(P.ErrorCode.UNKNOWN_SESSION, f"no session named {name!r}; sessions: "
                                      f"{self.hub.live_sessions()}", "style")
            msg = style_from_payload(payload)
            if msg.text == live.style and msg.guidance in (None, live.guidance):
                return                                # e.g. our own retained style seen again
            await live.set_style(msg.text, msg.blend_s, msg.guidance)
        except P.ProtocolError as e:
            await client.publish(f"{self.prefix}/{name}/error", e.to_json(), qos=0)
