"""The gateway hop alone: the gateway's own CPU per request, between a stand-in engine and a client, without Ray.

    python bench/gateway_hop.py [--seconds 5] [--profile]

A stand-in engine (16 chunks of an OpenAI chat stream, one every 3 ms, then the usage event and ``[DONE]``; or the
whole answer after 48 ms), reached on a replica's channel (``engines/channel.py``, the way the gateway reaches
replicas) and, for comparison, over plain HTTP/1.1 (raw asyncio), and the gateway (the `Gateway` class itself, on
uvloop) run as processes of their own; the client, in this one, keeps 8 or 32 requests in flight, streamed and not.
What is reported is the gateway process's CPU time (user + system, from /proc) per request: on a machine whose
cores the engine also needs, that is what the hop costs, and unlike requests/s it hardly moves with the machine's
other load. ``--profile`` samples the gateway (on the channel) during the streamed run at 32 and prints where its
time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

from gateway import cpu_seconds, free_port

TOKENS = 16

ENGINE = textwrap.dedent('''
    import asyncio, json, sys
    chunk = json.dumps({"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": {"content": " tok"}, "logprobs": None,
                                     "finish_reason": None}]})
    usage = json.dumps({"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [], "usage": {"prompt_tokens": 10, "total_tokens": 26, "completion_tokens": 16}})
    whole = json.dumps({"id": "chatcmpl-0", "object": "chat.completion", "model": "m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok " * 16},
                                     "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 10, "total_tokens": 26, "completion_tokens": 16}}).encode()
    def framed(event):
        data = b"data: " + event.encode() + b"\\n\\n"
        return b"%x\\r\\n%b\\r\\n" % (len(data), data)
    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                length = next(int(l.split(b":")[1]) for l in head.split(b"\\r\\n")
                              if l.lower().startswith(b"content-length"))
                body = json.loads(await reader.readexactly(length))
                if body.get("stream"):
                    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/event-stream\\r\\n"
                                 b"Transfer-Encoding: chunked\\r\\n\\r\\n")
                    for _ in range({tokens}):
                        await asyncio.sleep(0.003)
                        writer.write(framed(chunk))
                    writer.write(framed(usage) + framed("[DONE]") + b"0\\r\\n\\r\\n")
                else:
                    await asyncio.sleep(0.003 * {tokens})
                    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                                 b"Content-Length: %d\\r\\n\\r\\n%b" % (len(whole), whole))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
    async def app(scope, receive, send):  # the same answers as an ASGI app, for the replica's channel
        body = json.loads((await receive())["body"])
        if body.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for _ in range({tokens}):
                await asyncio.sleep(0.003)
                await send({"type": "http.response.body", "body": b"data: " + chunk.encode() + b"\\n\\n",
                            "more_body": True})
            await send({"type": "http.response.body",
                        "body": b"data: " + usage.encode() + b"\\n\\ndata: [DONE]\\n\\n"})
        else:
            await asyncio.sleep(0.003 * {tokens})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(whole)).encode())]})
            await send({"type": "http.response.body", "body": whole})
    async def main():
        if sys.argv[2] == "channel":
            import socket
            from reconciler.engines import channel
            sock = socket.socket()
            sock.bind(("127.0.0.1", int(sys.argv[1])))
            sock.listen(512)
            await channel.serve(app, sock)
            await asyncio.Event().wait()
        server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
        await server.serve_forever()
    import uvloop
    uvloop.run(main())
''').replace("{tokens}", str(TOKENS))

GATEWAY = textwrap.dedent('''
    import asyncio, sys, uvloop
    from reconciler.gateway.server import Gateway
    from reconciler.gateway.table import ModelRoute, RouteTable
    async def resolve(app):
        return sys.argv[1]
    async def main():
        gateway = Gateway(resolve)
        gateway.set_table(RouteTable(models=(ModelRoute(name="m", state="running", desired=1, backends=("m-0",),
                                                        route="/m", engine="stand-in"),), created=1))
        await gateway.start("127.0.0.1", int(sys.argv[2]))
        print("ready", flush=True)
        await asyncio.Event().wait()
    uvloop.run(main())
''')


async def load(url: str, *, concurrency: int, seconds: float, stream: bool, gateway: int) -> tuple[float, float]:
    """Requests/s and the gateway's CPU ms per request over ``seconds`` of ``concurrency`` clients."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": TOKENS,
                       "stream": stream}).encode()
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one() -> None:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as answer:
                await answer.read()
                assert answer.status == 200, answer.status

        await asyncio.gather(*[one() for _ in range(concurrency)])  # connections opened before the clock starts
        end = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < end:
                await one()
                done += 1

        began, cpu = time.monotonic(), cpu_seconds(gateway)
        await asyncio.gather(*[client() for _ in range(concurrency)])
        elapsed, used = time.monotonic() - began, cpu_seconds(gateway) - cpu
    return done / elapsed, 1000 * used / done


def profile(pid: int, seconds: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.txt"
        subprocess.run(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "500", "-f", "raw",
                        "-o", str(out), "--nonblocking"], check=True, capture_output=True)
        own: collections.Counter[str] = collections.Counter()
        total = 0
        for line in out.read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            own[stack.split(";")[-1]] += int(count)
            total += int(count)
    return "\n".join(f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print("| to the engine | answer | concurrency | req/s | gateway CPU per request (ms) |\n|---|---|---|---|---|")
    for wire in ("channel", "http"):
        engine_port, gateway_port = free_port(), free_port()
        engine = subprocess.Popen([sys.executable, "-c", ENGINE, str(engine_port), wire])
        scheme = "chan" if wire == "channel" else "http"
        gateway = subprocess.Popen([sys.executable, "-c", GATEWAY, f"{scheme}://127.0.0.1:{engine_port}",
                                    str(gateway_port)], stdout=subprocess.PIPE, text=True)
        try:
            assert gateway.stdout is not None and gateway.stdout.readline().strip() == "ready"
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            time.sleep(0.5)  # the engine listening
            for stream in (True, False):
                for concurrency in (8, 32):
                    rate, cpu = asyncio.run(load(url, concurrency=concurrency, seconds=args.seconds, stream=stream,
                                                 gateway=gateway.pid))
                    print(f"| {wire} | {'streamed' if stream else 'whole'} | {concurrency} | {rate:.1f} | {cpu:.3f} |",
                          flush=True)
            if args.profile and wire == "channel":
                async def loaded() -> None:
                    task = asyncio.ensure_future(load(url, concurrency=32, seconds=args.seconds + 4, stream=True,
                                                      gateway=gateway.pid))
                    await asyncio.sleep(2)
                    print("\nwhere the gateway's time goes, streamed at 32 (own samples, py-spy):")
                    print(await asyncio.to_thread(profile, gateway.pid, args.seconds))
                    await task

                asyncio.run(loaded())
        finally:
            for process in (gateway, engine):
                process.terminate()
                process.wait(10)

if __name__ == "__main__":
    main()
