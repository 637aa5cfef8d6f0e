"""A Python peer for the browser demo: aiortc over signaling.client.

    python -m examples.aiortc_peer ROOM [--url http://localhost:8000] [--peer-id ID]

(run from the repository's root, with requirements-dev.txt installed), then
open http://localhost:8000/#room=ROOM. For every demo page in the room it
holds one RTCPeerConnection, negotiated the way static/demo.js does it:

- roles: of two peers, the one whose id sorts first is polite; the impolite
  one makes the first offer, the polite one answers (and yields on glare);
- envelopes: "description" (an RTCSessionDescription's {type, sdp}),
  "candidate" (an RTCIceCandidate's JSON), and "hello" from a page that
  resumed after a reload and wants to start over;
- the chat: a data channel "chat" negotiated with id 0 on both sides, plain text.

It greets each page on the chat, echoes back every line it is sent, and sends
a synthetic video track (a colour that slowly changes).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import VideoFrame

from signaling.client import Session, join, rtc_ice_servers

log = logging.getLogger("aiortc_peer")

GREETING = "hello from aiortc"


class ColourTrack(VideoStreamTrack):
    """320x240 frames at 30 fps of one colour, whose brightness cycles: video made without a camera."""

    def __init__(self):
        super().__init__()
        self.frames = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=320, height=240, format="yuv420p")
        luma = 16 + (self.frames * 2) % 220
        for plane, value in zip(frame.planes, (luma, 90, 200), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        self.frames += 1
        return frame


class Call:
    """One RTCPeerConnection with one demo page, and the state perfect negotiation needs."""

    def __init__(self, session: Session, peer_id: str):
        self.session = session
        self.peer_id = peer_id
        self.polite = session.peer_id < peer_id  # the demo's rule, computed alike on both sides
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=rtc_ice_servers(session.ice_servers)))
        self.channel = None
        self.video_offer: asyncio.Future | None = None
        self.pc.on("connectionstatechange", lambda: log.info("%s: %s", peer_id, self.pc.connectionState))

    async def start(self) -> None:
        """The impolite side offers first; the polite side waits for that offer."""
        if not self.polite:
            self.attach()
            self.add_video()
            await self.offer()

    def attach(self) -> None:
        """The chat channel, made before the first description either side makes."""
        self.channel = self.pc.createDataChannel("chat", negotiated=True, id=0)
        self.channel.on("open", lambda: self.channel.send(GREETING))
        self.channel.on("message", self.on_chat)

    def add_video(self) -> None:
        self.pc.addTrack(ColourTrack())

    async def offer_video_once_connected(self) -> None:
        """Add the video track and offer it, once the connection is up.

        aiortc starts a new track's sender when a negotiation completes only if
        the DTLS transport is connected by then; renegotiated while the first
        handshake is still running, the track would never be sent.
        """
        connected = asyncio.Event()

        def check() -> None:
            if self.pc.connectionState == "connected":
                connected.set()

        self.pc.on("connectionstatechange", check)
        check()
        await connected.wait()
        self.add_video()
        await self.offer()

    def on_chat(self, text) -> None:
        log.info("%s says %r", self.peer_id, text)
        self.channel.send(f"echo: {text}")

    async def offer(self) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.describe()

    async def describe(self) -> None:
        # aiortc gathers every candidate before setLocalDescription returns: they are all in the SDP.
        description = self.pc.localDescription
        await self.session.send(self.peer_id, "description", {"type": description.type, "sdp": description.sdp})

    async def on_signal(self, kind: str, data) -> None:
        if kind == "description":
            if data["type"] == "offer" and self.pc.signalingState != "stable":
                # Glare: the impolite side ignores the other's offer, as the demo does. (The polite
                # side never has an offer out: this peer makes none but its first, as impolite.)
                return
            if self.channel is None:
                self.attach()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type=data["type"]))
            if data["type"] == "offer":
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.describe()
                if not self.pc.getSenders() and self.video_offer is None:
                    # The demo offers no video when its camera is off, and an answer cannot add
                    # any: offer again, now with the video track (the polite side may offer).
                    self.video_offer = asyncio.ensure_future(self.offer_video_once_connected())
        elif kind == "candidate" and data and data.get("candidate"):
            candidate = candidate_from_sdp(data["candidate"].removeprefix("candidate:"))
            candidate.sdpMid, candidate.sdpMLineIndex = data.get("sdpMid"), data.get("sdpMLineIndex")
            await self.pc.addIceCandidate(candidate)

    async def close(self) -> None:
        if self.video_offer is not None:
            self.video_offer.cancel()
        await self.pc.close()


async def serve(url: str, room: str, peer_id: str | None) -> None:
    calls: dict[str, Call] = {}

    async def call(peer: str) -> Call:
        """A new call with `peer`, replacing any earlier one."""
        if peer in calls:
            await calls.pop(peer).close()
        calls[peer] = Call(session, peer)
        await calls[peer].start()
        return calls[peer]

    stop = asyncio.current_task().cancel
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop)  # then leave the room, below
    async with await join(url, room, peer_id=peer_id) as session:
        log.info("joined %s as %s; open %s/#room=%s", room, session.peer_id, url.rstrip("/"), room)
        for peer in sorted(session.peers):
            await call(peer)
        try:
            async for envelope in session:
                kind, peer, data = envelope["type"], envelope["from"], envelope["data"]
                if kind in ("peer-joined", "hello"):
                    await call(peer)
                elif kind == "peer-left":
                    if peer in calls:
                        await calls.pop(peer).close()
                elif peer in calls or peer in session.peers:
                    target = calls.get(peer) or await call(peer)
                    try:
                        await target.on_signal(kind, data)
                    except Exception:  # one page's bad description must not end the others' calls
                        log.exception("%s: %s failed", peer, kind)
        finally:
            for one in calls.values():
                await one.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.aiortc_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("room")
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--peer-id", help="this peer's id (default: the server picks one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for chatty in ("httpx", "aioice", "aiortc"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args.url, args.room, args.peer_id))
    except asyncio.CancelledError:
        pass  # Ctrl-C or SIGTERM: the room was left


if __name__ == "__main__":
    main()
