"""Simulated PLCs for the tests and the PLC rows of `make bench`: asyncua's and pymodbus's own
servers on 127.0.0.1, each in its own event loop thread, recording what the station wrote and
when (perf_counter, so a caller in the same process can time a part from its camera's send to
its verdict at the PLC). No hardware, no network beyond loopback."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any


class LoopThread:
    """An event loop in its own thread, for a server that the station reaches over loopback."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="plc-server", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


OPCUA_NODES = ("Result", "PartId", "Score", "ResultValid", "Ack", "NoAck")


class OpcUaPlcSim:
    """asyncua's server with the station's nodes (ns=2;s=ZD.<name>) and a PLC's side of the
    handshake: when the station sets ResultValid it reads PartId, Result and Score, and raises
    Ack; when ResultValid drops, it drops Ack. NoAck is an Ack that nothing raises."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = LoopThread()
        self.seen: list[tuple[str, int, float]] = []  # (part id, result code, score)
        self.arrivals: dict[str, float] = {}  # part id -> perf_counter when ResultValid came
        self.nodes: dict[str, Any] = {}
        self.server: Any = None

    def node(self, name: str) -> str:
        return f"ns=2;s=ZD.{name}"

    def start(self) -> None:
        """About 3 s (asyncua's server init): start one per test session."""
        self.runner.run(self._start())

    async def _start(self) -> None:
        from asyncua import Server, ua
        from asyncua.common.callback import CallbackType

        # asyncua's server logs each node of its standard address space it skips at INFO: noise
        # in the bench's progress output and the tests' logs.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        ns = await server.register_namespace("urn:zerodefect:test-plc")
        assert ns == 2
        station = await server.nodes.objects.add_object(ua.NodeId("Station", ns), "Station")
        kinds = {"Result": (0, ua.VariantType.Int16), "PartId": ("", ua.VariantType.String)}
        kinds["Score"] = (0.0, ua.VariantType.Float)
        for name in OPCUA_NODES:
            value, kind = kinds.get(name, (False, ua.VariantType.Boolean))
            node = await station.add_variable(ua.NodeId(f"ZD.{name}", ns), name, ua.Variant(value, kind))
            await node.set_writable()
            self.nodes[name] = node
        self.valid_id = self.nodes["ResultValid"].nodeid
        server.subscribe_server_callback(CallbackType.PostWrite, self._written)
        await server.start()
        self.server = server

    async def _written(self, event, _dispatcher) -> None:
        """Runs in the server right after each client write: the PLC program's scan."""
        if not event.is_external:
            return
        for item in event.request_params.NodesToWrite:
            if item.NodeId != self.valid_id:
                continue
            raised = bool(item.Value.Value.Value)
            if raised:
                part = await self.nodes["PartId"].read_value()
                self.arrivals[part] = time.perf_counter()
                result = await self.nodes["Result"].read_value()
                self.seen.append((part, result, await self.nodes["Score"].read_value()))
            await self.nodes["Ack"].write_value(raised)

    def stop(self) -> None:
        self.runner.run(self.server.stop())
        self.runner.close()


def opcua_section(sim: OpcUaPlcSim, **changes: Any) -> dict[str, Any]:
    """A station's `plc:` section for the simulated OPC UA PLC's nodes, with the handshake."""
    return {
        "protocol": "opcua",
        "url": sim.url,
        "result_node": sim.node("Result"),
        "part_id_node": sim.node("PartId"),
        "score_node": sim.node("Score"),
        "result_valid_node": sim.node("ResultValid"),
        "ack_node": sim.node("Ack"),
    } | changes


# The simulated Modbus PLC's layout: the result block (code, sequence, then the part id's
# registers) at RESULT_REGISTER, the reject coil, and the heartbeat register.
RESULT_REGISTER = 10
PART_ID_REGISTERS = 10
REJECT_COIL = 3


def modbus_section(port: int, **changes: Any) -> dict[str, Any]:
    """A station's `plc:` section for a Modbus TCP PLC on 127.0.0.1:`port` with this layout."""
    return {
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "reject_coil": REJECT_COIL,
        "pulse_ms": 20,
        "result_register": RESULT_REGISTER,
        "part_id_registers": PART_ID_REGISTERS,
        "heartbeat_register": 0,
    } | changes


class ModbusPlcSim:
    """pymodbus's TCP server with 16 coils and 64 holding registers; records every write."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writes: list[tuple[int, int, list]] = []  # (function code, address, values)
        self.times: list[float] = []  # perf_counter of each write, beside it
        self.runner = LoopThread()
        self.server: Any = None

    async def _action(self, function_code, start_address, address, count, registers, set_values):
        if set_values is not None:
            self.times.append(time.perf_counter())
            self.writes.append((function_code, address, list(set_values)))
        return None

    def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        async def listen():
            bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
            words = [SimData(0, count=64, values=0, datatype=DataType.REGISTERS)]
            device = SimDevice(id=0, simdata=(bits, list(bits), words, list(words)), action=self._action)
            self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await self.server.listen()

        self.runner.run(listen())

    def stop(self) -> None:
        self.runner.run(self.server.shutdown())

    def close(self) -> None:
        if self.server is not None:
            self.stop()
        self.runner.close()

    def coil_edges(self, coil: int) -> int:
        """Rising edges of one coil: the pulses the reject gate saw."""
        edges, on = 0, False
        for code, address, values in list(self.writes):
            if code in (5, 15) and address == coil:
                edges += values[0] and not on
                on = bool(values[0])
        return edges

    def results(self, register: int, words: int) -> list[tuple[int, str]]:
        """(result code, part id) of each result block written at `register`."""
        return [(code, part) for code, part, _ in self.timed_results(register, words)]

    def timed_results(self, register: int, words: int) -> list[tuple[int, str, float]]:
        """(result code, part id, perf_counter at arrival) of each result block."""
        return [
            (values[0], _part_id(values[2 : 2 + words]), at)
            for (code, address, values), at in zip(list(self.writes), list(self.times), strict=False)
            if code == 16 and address == register
        ]

    def pulses_per_result(self, register: int, words: int, coil: int) -> list[tuple[int, str, int]]:
        """(result code, part id, rising edges of `coil` before the next result block) of each
        result block: which part each reject pulse belonged to, as the PLC saw them in order."""
        blocks: list[list] = []
        on = False
        for code, address, values in list(self.writes):
            if code == 16 and address == register:
                blocks.append([values[0], _part_id(values[2 : 2 + words]), 0])
            elif code in (5, 15) and address == coil:
                if values[0] and not on and blocks:
                    blocks[-1][2] += 1
                on = bool(values[0])
        return [(code, part, edges) for code, part, edges in blocks]


def _part_id(words: list[int]) -> str:
    """The part id of a result block: ASCII, two characters per big-endian register, zero padded."""
    return b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0").decode()
