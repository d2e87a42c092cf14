"""A TLS-terminating TCP proxy for the tests: python3 tls_proxy.py CERT KEY LISTEN_PORT TARGET_PORT.

Accepts TLS on 127.0.0.1:LISTEN_PORT with CERT/KEY and passes the bytes to
127.0.0.1:TARGET_PORT in plain TCP, so any HTTP server becomes an https one.
Prints "listening" once it accepts connections.
"""

import asyncio
import ssl
import sys

cert, key, listen, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def handle(reader, writer):
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
