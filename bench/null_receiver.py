#!/usr/bin/env python3
"""A push receiver that accepts everything: reads each HTTP request body and answers
204 without decoding it. Used to measure the log shipper without the cost of a Loki.

    null_receiver.py PORT

Listens on 127.0.0.1 only. Prints `listening on 127.0.0.1:PORT` on stderr; stops on
SIGTERM/SIGINT. Counts requests and body bytes and prints them on stderr at exit.
"""

import asyncio
import signal
import sys

RESPONSE = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


class Stats:
    requests = 0
    body_bytes = 0


class Conn(asyncio.Protocol):
    def __init__(self):
        self.buf = bytearray()
        self.need = None  # body bytes still expected for the current request
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                del self.buf[: end + 4]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1].strip())
                if b"transfer-encoding: chunked" in head:
                    # Not used by the shipper; refuse rather than misparse.
                    self.transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    self.transport.close()
                    return
                self.need = length
            if len(self.buf) < self.need:
                return
            Stats.body_bytes += self.need
            Stats.requests += 1
            del self.buf[: self.need]
            self.need = None
            self.transport.write(RESPONSE)


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port)
    addr = server.sockets[0].getsockname()
    sys.stderr.write(f"listening on {addr[0]}:{addr[1]}\n")
    sys.stderr.flush()
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    server.close()
    sys.stderr.write(f"requests {Stats.requests} body_bytes {Stats.body_bytes}\n")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
