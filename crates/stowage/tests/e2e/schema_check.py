"""Runs schemathesis against docs/openapi.yaml and a live daemon's REST
socket, for a bounded time, and exits with its verdict.

    schema_check.py SOCKET SPEC SECONDS

schemathesis speaks HTTP over TCP, so a forwarder on a loopback port
passes each connection to the unix socket unchanged. The checks hold the
server to its document: every status (5xx included) one the document
declares, every content type, header and body as documented, requests
the schema forbids refused, and undocumented methods answered 405. Not
checked: that every schema-valid request succeeds, since options a
driver does not know, sizes the disk cannot hold and names that do not
exist are valid JSON of the documented shape and are rightly refused."""

import asyncio
import subprocess
import sys
import threading


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def forward(socket_path, ready):
    async def handle(client_r, client_w):
        daemon_r, daemon_w = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(pipe(client_r, daemon_w), pipe(daemon_r, client_w))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main():
    socket_path, spec, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
    ready = []
    threading.Thread(target=forward, args=(socket_path, ready), daemon=True).start()
    while not ready:
        threading.Event().wait(0.05)
    checks = ",".join([
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
    ])
    cmd = [
        sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
        "run", spec,
        "--url", f"http://127.0.0.1:{ready[0]}",
        "--checks", checks,
        "--max-time", seconds,
        "--workers", "1",
        "--request-timeout", "30",
        "--seed", "1",
    ]
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
