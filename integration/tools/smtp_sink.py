"""A real SMTP server for tests (aiosmtpd): saves each message it accepts as
DIR/NNNNNN.eml (envelope in X-Envelope-From/X-Envelope-To headers, then the message as
received). Prints "listening on HOST:PORT" once it accepts connections.

Usage: smtp_sink.py HOST DIR   (the port is chosen by the system)
"""

import asyncio
import itertools
import os
import sys

from aiosmtpd.smtp import SMTP


class Save:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        i = next(self.counter)
        tmp = os.path.join(self.directory, f".{i:06}.tmp")
        with open(tmp, "wb") as f:
            f.write(b"X-Envelope-From: " + envelope.mail_from.encode() + b"\r\n")
            f.write(b"X-Envelope-To: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        # Renamed when complete: a reader never sees half a message.
        os.rename(tmp, os.path.join(self.directory, f"{i:06}.eml"))
        return "250 OK"


async def main(host, directory):
    loop = asyncio.get_running_loop()
    # One handler for all connections: its counter names the files.
    handler = Save(directory)
    server = await loop.create_server(lambda: SMTP(handler), host, 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {host}:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
