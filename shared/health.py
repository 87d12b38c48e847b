"""The standard `grpc.health.v1` service, which Kubernetes' native gRPC probes call."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Reports one overall status ("") and the status of named services."""

    def __init__(self, services: tuple[str, ...] = ()) -> None:
        self.servicer = HealthServicer()
        self.services = ("", *services)
        self.serving: bool | None = None

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def set(self, serving: bool) -> None:
        if serving == self.serving:
            return
        self.serving = serving
        for name in self.services:
            await self.servicer.set(name, SERVING if serving else NOT_SERVING)

    async def shutdown(self) -> None:
        """Everything NOT_SERVING from now on, so probes and balancers move away."""
        await self.servicer.enter_graceful_shutdown()
