"""The official Python MCP SDK (`mcp` on PyPI) against Orch's MCP endpoints
(tests/reference_servers.rs runs this).

Connects to `/mcp` and `/mcp/everything` (streamable HTTP), `/sse/everything`
(legacy SSE) and `orch mcp` (stdio); on each: initialise, list tools, call
server-everything's `echo`. Prints one JSON object, keyed by endpoint, that
the Rust test asserts on.

Environment: ORCH_BASE_URL (http://host:port), ORCH_API_KEY (a key with
tools:call), ORCH_BIN, and ORCH_STORE and ORCH_MCP_CONFIG for `orch mcp`.
"""
import asyncio
import json
import os

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

BASE = os.environ["ORCH_BASE_URL"]
AUTH = {"Authorization": "Bearer " + os.environ["ORCH_API_KEY"]}


async def session(transport, echo_tool):
    """What one endpoint answers: who it is, its tools, and an echo."""
    async with Client(transport) as client:
        tools = await client.list_tools()
        echoed = await client.call_tool(echo_tool, {"message": "from python"})
        return {
            "server": client.server_info.name if client.server_info else None,
            "protocol": client.protocol_version,
            "tools": sorted(tool.name for tool in tools.tools),
            "echo": [block.text for block in echoed.content if block.type == "text"],
            "echo_is_error": echoed.is_error,
        }


def http(path):
    client = httpx2.AsyncClient(headers=AUTH, timeout=httpx2.Timeout(30, read=300))
    return streamable_http_client(BASE + path, http_client=client)


async def refused_without_key():
    """A client with no key: the HTTP statuses it saw, and the error it raised."""
    statuses = []

    async def record(response):
        statuses.append(response.status_code)

    client = httpx2.AsyncClient(event_hooks={"response": [record]})
    try:
        async with Client(streamable_http_client(BASE + "/mcp", http_client=client)) as session:
            await session.list_tools()
    except BaseException as error:
        # The SDK's task groups wrap the cause in ExceptionGroups.
        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        return {"statuses": statuses, "error": type(error).__name__ + ": " + str(error)}
    return {"statuses": statuses, "error": None}


async def main():
    stdio = StdioServerParameters(
        command=os.environ["ORCH_BIN"],
        args=["mcp"],
        # The SDK passes only a safe subset of the environment by default;
        # `orch mcp` needs its settings, and PATH to find node for its servers.
        env={**os.environ, "ORCH_LOG": "warn"},
    )
    report = {
        "mcp": await session(http("/mcp"), "everything__echo"),
        "mcp_server": await session(http("/mcp/everything"), "echo"),
        "sse": await session(sse_client(BASE + "/sse/everything", headers=AUTH), "echo"),
        "stdio": await session(stdio, "everything.echo"),
        "no_key": await refused_without_key(),
    }
    print(json.dumps(report))


asyncio.run(main())
