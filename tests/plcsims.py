"""The simulated PLCs live in zerodefect/plcsim.py (the PLC bench uses them too); the tests
import them from here."""

from zerodefect.plcsim import (
    PART_ID_REGISTERS,
    REJECT_COIL,
    RESULT_REGISTER,
    LoopThread,
    ModbusPlcSim,
    OpcUaPlcSim,
    modbus_section,
    opcua_section,
)

__all__ = [
    "PART_ID_REGISTERS",
    "REJECT_COIL",
    "RESULT_REGISTER",
    "LoopThread",
    "ModbusPlcSim",
    "OpcUaPlcSim",
    "modbus_section",
    "opcua_section",
]
