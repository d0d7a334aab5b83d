"""A fast local HTTP/1.1 sink for `bench/integration.py`: answers every request with
``{"status":"accepted","id":"x"}`` and keeps the connection open (keep-alive).

One asyncio process, no framework: it reads the request line and headers, then exactly
Content-Length bytes of body (chunked bodies are not expected from our clients and are
refused with 411), and answers at once. Pipelined requests are answered in order. It
prints ``READY <port>`` on stdout once listening and runs until killed.

    python bench/integration_sink.py [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

BODY = b'{"status":"accepted","id":"x"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)
LENGTH_REQUIRED = b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.need = -1  # body bytes still expected; -1: reading a head

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self.transport.close()
                    return
                head = bytes(self.buffer[:end]).lower()
                del self.buffer[: end + 4]
                self.need = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name == b"content-length":
                        self.need = int(value.strip())
                    elif name == b"transfer-encoding" and b"chunked" in value:
                        self.transport.write(LENGTH_REQUIRED)
                        self.transport.close()
                        return
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            self.need = -1
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=128)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
