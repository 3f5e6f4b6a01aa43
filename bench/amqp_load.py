"""Closed-loop AMQP-RPC load straight to a daemon's queue (aio-pika, direct reply-to)."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika

from bench.load import PAYLOAD, finished


async def _run(
    url: str, queue: str, concurrency: int, seconds: float, minimum: int
) -> dict[str, float]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    futures: dict[str, asyncio.Future[None]] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = futures.pop(message.correlation_id or "", None)
        if future is not None:
            future.set_result(None)

    replies = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    await replies.consume(on_reply, no_ack=True)
    latencies: list[float] = []
    until = finished(seconds, minimum, latencies)
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while not until():
            correlation_id = uuid.uuid4().hex
            future = futures[correlation_id] = loop.create_future()
            started = time.perf_counter()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    PAYLOAD, correlation_id=correlation_id, reply_to="amq.rabbitmq.reply-to"
                ),
                queue,
            )
            await asyncio.wait_for(future, 30)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await connection.close()
    latencies.sort()
    count = len(latencies)
    return {
        "count": count,
        "rate": count / elapsed,
        "p50_ms": latencies[count // 2] * 1000,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000,
    }


def rpc_load(
    url: str, queue: str, concurrency: int, seconds: float, minimum: int = 0
) -> dict[str, float]:
    """RPC load for `seconds`, and on (up to ten times as long) until `minimum` replies."""
    return asyncio.run(_run(url, queue, concurrency, seconds, minimum))
