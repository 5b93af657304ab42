#!/usr/bin/env python3
"""A userspace TCP relay that behaves like a slow WAN link (this kernel has no
sch_netem, so `tc` cannot add delay).

    slow-relay.py --listen 127.0.0.1:PORT --to HOST:PORT --rtt-ms 20 --rate-mbit 400 \
        [--stats FILE] [--queue-kib 512]

Every connection accepted on --listen is relayed to --to, byte for byte (TLS passes
through untouched). The link model, per direction:

  * one link shared by all connections (like one WAN uplink/downlink): each chunk
    waits for the link to be free, occupies it for len/rate seconds
    (serialization, no burst allowance), then takes rtt/2 to arrive (propagation).
    So a request/response round trip costs at least the RTT, and N parallel
    connections share the rate instead of each getting it;
  * a bounded queue in front of the link (--queue-kib, like a router buffer): when
    more than that is waiting, reading from the senders stops, so TCP flow
    control pushes back on them rather than the relay buffering a whole blob;
  * connection set-up costs one RTT, as a TCP handshake would: what the client
    sends first is not put on the link before accept time + RTT.

Not modelled: loss, TCP slow start and the receive window (both loopback hops use
the kernel's full-speed TCP).

Bytes are counted when delivered, per direction ("up" = client to target, "down" =
target to client), in total and per connection. The counters go to --stats as JSON,
replaced atomically (write + rename), at most every 100 ms after a change, and at
exit. SIGUSR1 resets them (totals, connection count, closed connections; the
"resets" field counts resets, so a caller can wait for its reset to show). SIGTERM
or SIGINT writes the stats and exits 0.

When it is listening, it prints HOST:PORT (the real port when --listen asked for
port 0) on a line of its own on stdout and flushes, so scripts can wait for it.
Python 3.11 standard library only.
"""

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import sys
import time

CHUNK_WRITE_HIGH = 1 << 20  # a destination buffering this much pauses its source
STATS_INTERVAL = 0.1  # seconds between stats writes at most
MAX_CONN_RECORDS = 1000  # closed connections kept in the stats (the newest)


def log(msg):
    print(f"slow-relay: {msg}", file=sys.stderr, flush=True)


def parse_hostport(text, what):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{what} must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


class Link:
    """One direction of the emulated link, shared by every connection."""

    def __init__(self, loop, rate_bps, delay, queue_bytes):
        self.loop = loop
        self.rate = rate_bps  # bytes per second; 0 = unlimited
        self.delay = delay  # one-way propagation, seconds
        self.queue_time = queue_bytes / rate_bps if rate_bps else 0.0
        self.busy_until = 0.0  # when the link finishes sending what it has accepted
        self.blocked = set()  # Pipes paused because the queue is full
        self.wake = None

    def reserve(self, nbytes):
        """Puts nbytes on the link; returns when they arrive at the far end."""
        start = max(self.loop.time(), self.busy_until)
        if self.rate:
            self.busy_until = start + nbytes / self.rate
        else:
            self.busy_until = start
        return self.busy_until + self.delay

    def full(self):
        return self.rate and self.busy_until - self.loop.time() > self.queue_time

    def block(self, pipe):
        self.blocked.add(pipe)
        if self.wake is None:
            # Wake senders once the queue has drained back to its limit.
            when = self.busy_until - self.queue_time
            self.wake = self.loop.call_at(when, self._unblock)

    def _unblock(self):
        self.wake = None
        if self.full():
            self.wake = self.loop.call_at(self.busy_until - self.queue_time, self._unblock)
            return
        blocked, self.blocked = self.blocked, set()
        for pipe in blocked:
            pipe.set_paused("link", False)


class Pipe:
    """One direction of one connection: data read from src, delivered to dst
    through the link's delay line, in order."""

    def __init__(self, relay, conn, direction, link):
        self.relay = relay
        self.conn = conn
        self.direction = direction  # "up" or "down"
        self.link = link
        self.src = None  # transports, set as each end connects
        self.dst = None
        self.line = collections.deque()  # (arrival time, bytes | None for EOF)
        self.timer = None
        self.pause_reasons = set()
        self.eof_fed = False
        self.done = False  # EOF delivered, or nothing more can be delivered

    def attach_src(self, transport):
        self.src = transport
        if self.pause_reasons:
            transport.pause_reading()

    def attach_dst(self, transport):
        self.dst = transport
        self._schedule()

    def set_paused(self, reason, paused):
        was = bool(self.pause_reasons)
        if paused:
            self.pause_reasons.add(reason)
        else:
            self.pause_reasons.discard(reason)
        now = bool(self.pause_reasons)
        if now != was and self.src is not None and not self.src.is_closing():
            if now:
                self.src.pause_reading()
            else:
                self.src.resume_reading()

    def feed(self, data):
        """Called with data read from src, or None at EOF."""
        if self.done or self.eof_fed:
            return
        if data is None:
            self.eof_fed = True
            last = self.line[-1][0] if self.line else 0.0
            arrive = max(self.link.loop.time() + self.link.delay, last)
        else:
            arrive = self.link.reserve(len(data))
        self.line.append((arrive, data))
        self._schedule()
        if data is not None and self.link.full():
            self.set_paused("link", True)
            self.link.block(self)

    def _schedule(self):
        # Deliveries wait for the destination to exist (the target is connected
        # after the client, and a server may speak first).
        if self.timer is None and self.line and self.dst is not None:
            self.timer = self.link.loop.call_at(self.line[0][0], self._deliver)

    def _deliver(self):
        self.timer = None
        now = self.link.loop.time()
        while self.line and self.line[0][0] <= now:
            _, data = self.line.popleft()
            if data is None:
                self.done = True
                if not self.dst.is_closing():
                    try:
                        self.dst.write_eof()
                    except OSError:  # the peer is gone (reset): nothing more to tell it
                        self.dst.abort()
                self.conn.pipe_done()
                return
            if self.dst.is_closing():
                continue
            self.dst.write(data)
            self.relay.count(self.conn, self.direction, len(data))
        self._schedule()

    def cancel(self):
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.line.clear()
        self.link.blocked.discard(self)


class End(asyncio.Protocol):
    """One socket of a connection; `inbound` is the Pipe its data goes into and
    `outbound` the Pipe that writes to it."""

    def __init__(self, conn, inbound, outbound):
        self.conn = conn
        self.inbound = inbound
        self.outbound = outbound
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.inbound.attach_src(transport)
        self.outbound.attach_dst(transport)
        transport.set_write_buffer_limits(high=CHUNK_WRITE_HIGH)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.inbound.feed(data)

    def eof_received(self):
        self.inbound.feed(None)
        return True  # keep the write side open: the other direction may still flow

    def pause_writing(self):
        self.outbound.set_paused("write", True)

    def resume_writing(self):
        self.outbound.set_paused("write", False)

    def connection_lost(self, exc):
        self.conn.end_lost(self, exc)


class Connection:
    def __init__(self, relay, cid, peer):
        self.relay = relay
        self.id = cid
        self.peer = peer
        self.opened = time.time()
        self.closed = None
        self.bytes = {"up": 0, "down": 0}
        self.up = Pipe(relay, self, "up", relay.links["up"])
        self.down = Pipe(relay, self, "down", relay.links["down"])
        self.client = End(self, self.up, self.down)
        self.server = End(self, self.down, self.up)
        self.finished = False

    async def start(self, client_sock):
        loop = self.relay.loop
        # The emulated TCP handshake: the client's first bytes are not read (they
        # wait in the kernel) until one RTT after the accept. Meanwhile connect to
        # the target, whose first bytes (if it speaks first) wait for the client end.
        handshake = loop.create_task(asyncio.sleep(self.relay.rtt))
        try:
            await loop.create_connection(lambda: self.server, *self.relay.target)
        except OSError as e:
            handshake.cancel()
            log(f"connection {self.id}: cannot reach {self.relay.target[0]}:{self.relay.target[1]}: {e}")
            client_sock.close()
            self.finish()
            return
        await handshake
        await loop.connect_accepted_socket(lambda: self.client, client_sock)

    def pipe_done(self):
        if self.up.done and self.down.done:
            self.finish()

    def end_lost(self, end, exc):
        # The far side of what `end` was sending still gets what is in flight,
        # then EOF; nothing more can be written to `end`.
        if self.finished:
            return
        end.outbound.cancel()
        end.inbound.feed(None)
        self.pipe_done()

    def finish(self):
        if self.finished:
            return
        self.finished = True
        self.closed = time.time()
        for pipe in (self.up, self.down):
            pipe.cancel()
        for end in (self.client, self.server):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()
        self.relay.closed_conn(self)


class Relay:
    def __init__(self, args, loop):
        self.loop = loop
        self.args = args
        self.target = args.to
        self.rtt = args.rtt_ms / 1000.0
        rate = args.rate_mbit * 1e6 / 8
        queue = args.queue_kib * 1024
        self.links = {d: Link(loop, rate, self.rtt / 2, queue) for d in ("up", "down")}
        self.next_id = 1
        self.conns = {}  # open connections by id
        self.closed = collections.deque(maxlen=MAX_CONN_RECORDS)
        self.reset_counters()
        self.resets = 0
        self.stats_timer = None
        self.last_write = 0.0
        self.listen_addr = None
        self.server = None
        self.stopping = asyncio.Event()

    def reset_counters(self):
        self.total = {"up": 0, "down": 0}
        self.connections = 0  # accepted since the last reset
        self.closed.clear()
        for conn in getattr(self, "conns", {}).values():
            conn.bytes = {"up": 0, "down": 0}

    # --- stats ---------------------------------------------------------------

    def count(self, conn, direction, nbytes):
        conn.bytes[direction] += nbytes
        self.total[direction] += nbytes
        self.changed()

    def changed(self):
        if self.args.stats is None or self.stats_timer is not None:
            return
        when = max(self.loop.time(), self.last_write + STATS_INTERVAL)
        self.stats_timer = self.loop.call_at(when, self.write_stats)

    def write_stats(self):
        self.stats_timer = None
        if self.args.stats is None:
            return
        self.last_write = self.loop.time()

        def record(c):
            return {"id": c.id, "peer": c.peer, "up": c.bytes["up"], "down": c.bytes["down"],
                    "opened": round(c.opened, 3),
                    "closed": None if c.closed is None else round(c.closed, 3)}

        stats = {
            "listen": self.listen_addr,
            "to": f"{self.target[0]}:{self.target[1]}",
            "rtt_ms": self.args.rtt_ms,
            "rate_mbit": self.args.rate_mbit,
            "up_bytes": self.total["up"],
            "down_bytes": self.total["down"],
            "total_bytes": self.total["up"] + self.total["down"],
            "connections": self.connections,
            "active": len(self.conns),
            "resets": self.resets,
            "updated": round(time.time(), 3),
            "per_connection": [record(c) for c in self.closed] + [record(c) for c in self.conns.values()],
        }
        path = self.args.stats
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(stats, f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            log(f"cannot write stats to {path}: {e}")

    def on_reset(self):
        self.reset_counters()
        self.resets += 1
        self.changed()

    # --- connections ---------------------------------------------------------

    def closed_conn(self, conn):
        self.conns.pop(conn.id, None)
        self.closed.append(conn)
        self.changed()

    async def accept(self, sock):
        sock.setblocking(False)
        try:
            peer = "%s:%d" % sock.getpeername()[:2]
        except OSError:
            sock.close()
            return
        conn = Connection(self, self.next_id, peer)
        self.next_id += 1
        self.conns[conn.id] = conn
        self.connections += 1
        self.changed()
        try:
            await conn.start(sock)
        except Exception as e:  # noqa: BLE001 - one bad connection must not stop the relay
            log(f"connection {conn.id}: {e!r}")
            conn.finish()

    async def serve(self):
        host, port = self.args.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(512)
        lsock.setblocking(False)
        name = lsock.getsockname()
        self.listen_addr = f"{host}:{name[1]}" if family == socket.AF_INET else f"[{host}]:{name[1]}"
        tasks = set()

        async def acceptor():
            while True:
                sock, _ = await self.loop.sock_accept(lsock)
                t = self.loop.create_task(self.accept(sock))
                tasks.add(t)
                t.add_done_callback(tasks.discard)

        acc = self.loop.create_task(acceptor())
        self.write_stats()
        print(self.listen_addr, flush=True)
        log(f"relaying {self.listen_addr} -> {self.target[0]}:{self.target[1]}, "
            f"rtt {self.args.rtt_ms} ms, {self.args.rate_mbit} Mbit/s per direction")
        await self.stopping.wait()
        acc.cancel()
        lsock.close()
        for conn in list(self.conns.values()):
            for end in (conn.client, conn.server):
                if end.transport is not None:
                    end.transport.abort()
            conn.finish()
        for t in list(tasks):
            t.cancel()
        if self.stats_timer is not None:
            self.stats_timer.cancel()
        self.write_stats()
        log(f"stopped; relayed {self.total['up']} bytes up, {self.total['down']} down "
            f"since the last reset")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, type=lambda s: parse_hostport(s, "--listen"),
                   help="HOST:PORT to listen on (port 0: any free port)")
    p.add_argument("--to", required=True, type=lambda s: parse_hostport(s, "--to"),
                   help="HOST:PORT to relay to")
    p.add_argument("--rtt-ms", type=float, default=20.0,
                   help="round-trip time to add (half each way; default 20)")
    p.add_argument("--rate-mbit", type=float, default=400.0,
                   help="link rate per direction in Mbit/s, 0 = unlimited (default 400)")
    p.add_argument("--queue-kib", type=int, default=512,
                   help="bytes queued before the link pushes back on senders (default 512)")
    p.add_argument("--stats", help="JSON stats file (replaced atomically)")
    args = p.parse_args()
    if args.rtt_ms < 0 or args.rate_mbit < 0 or args.queue_kib < 1:
        p.error("--rtt-ms and --rate-mbit must be >= 0, --queue-kib >= 1")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    relay = Relay(args, loop)
    loop.add_signal_handler(signal.SIGTERM, relay.stopping.set)
    loop.add_signal_handler(signal.SIGINT, relay.stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, relay.on_reset)
    try:
        loop.run_until_complete(relay.serve())
    except OSError as e:
        log(f"cannot listen on {args.listen[0]}:{args.listen[1]}: {e}")
        sys.exit(1)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
