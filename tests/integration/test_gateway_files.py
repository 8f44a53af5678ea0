"""Out of file descriptors (EMFILE): the gateway logs accept() failures once per interval, never a traceback
per attempt, and keeps serving once descriptors are free again. Runs the gateway in a child process whose file
limit is lowered, so that the test process keeps its own."""

from __future__ import annotations

import asyncio
import sys
import textwrap

from tests.mqtt_support import free_port

CHILD = textwrap.dedent(
    """
    import asyncio, logging, resource, sys
    from tests.mqtt_support import EchoShadowHandler, MemoryDirectory
    from fleetops.messaging.embedded import BrokerOptions, EmbeddedBroker

    async def main() -> None:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        service = EmbeddedBroker(MemoryDirectory(), EchoShadowHandler(), port=int(sys.argv[1]),
                                 options=BrokerOptions(connect_timeout_s=60))
        await service.start()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))  # a few dozen connections fit
        print("ready", flush=True)
        await asyncio.sleep(float(sys.argv[2]))
        await service.stop()

    asyncio.run(main())
    """
)


async def test_accept_failures_for_lack_of_files_log_one_line_per_interval() -> None:
    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(port), "4", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        connections = []
        for _ in range(150):  # well past the limit of 64: the kernel queues them, accept() fails
            connections.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(1.5)  # accept() keeps failing meanwhile, several times a second
        for _, writer in connections:
            writer.close()
        stderr = (await asyncio.wait_for(child.stderr.read(), 30)).decode()
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    failures = [line for line in stderr.splitlines() if "accept() failed" in line]
    assert 1 <= len(failures) <= 2, stderr  # once per 10 s, however many attempts
    assert "Too many open files" in failures[0]
    assert "Traceback" not in stderr
