"""A CPU model actor for ndif 0.1.2, selected with NDIF_MODEL_IMPORT_PATH=cpu_deployment.CPUModelActor.

The stock actor (ndif.services.ray.deployments.modeling.base.ModelActor) pins, caps and syncs CUDA
devices while loading, parking (HOT<->WARM) and cleaning up after each request. On a CPU-only
machine those calls raise, so this subclass loads the model the same way (nnsight's
``HuggingFaceModel.from_model_key(..., dispatch=True, dtype=...)``) without a device placement
and leaves out every ``torch.cuda`` call. Request execution (``run``/``execute``) is the stock one.
The controller still believes it placed the replica on the fake GPU that ``ray start --num-gpus=1``
advertises; nothing here touches it.

Measurement (what the server side of a request costs): with ``NDIF_REQUEST_LOG`` set (server.sh sets
it to ``$NDIF_STATE_DIR/logs/requests.jsonl``), every request appends one JSON line: its id and status,
the payload bytes it arrived with, the seconds spent deserialising it, running the block, torch.save-ing
the result, compressing it (zstd, what the client asked for) and putting it into the object store, the
result's bytes before and after compression, the actor's CPU seconds, and its peak resident memory during the
request (``VmHWM``, reset before each request through ``/proc/self/clear_refs``) beside its resident
memory before it. The request path itself is the stock one, step for step (``execute`` is the stock
body with clocks around its three steps).
"""

from __future__ import annotations

import gc
import io
import json
import os
import threading
import time
from typing import Dict

import ray
import torch
from nnsight.modeling.huggingface import HuggingFaceModel

from ndif.services.ray.deployments.modeling.base import KILL_REASON_PREEMPTED, BaseModelDeployment
from ndif.services.ray.deployments.modeling.nns import execute_traced_block, prepare_traced_block
from ndif.services.ray.deployments.modeling.util import cpu_pickle_module


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (kB there), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


class CPUModelDeployment(BaseModelDeployment):
    def load_from_disk(self) -> HuggingFaceModel:
        kwargs = dict(self.kwargs)
        if not kwargs.get("trust_remote_code"):  # the actor args always carry it; nnsight 0.8.1 keys on its absence
            kwargs.pop("trust_remote_code", None)
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, **kwargs)
        model._module.requires_grad_(False)
        with torch.no_grad():  # page the (memory-mapped) weights in now, as a GPU server copies them to the device:
            for p in model._module.parameters():  # the first request's peak memory is then its own, not the weights'
                p.reshape(-1)[::1024].sum()
        return model

    async def to_cache(self) -> None:  # HOT -> WARM: the weights already live on the CPU
        await self.cancel(KILL_REASON_PREEMPTED)
        self.cached = True

    def from_cache(self, gpu_mem_bytes_by_id: Dict[int, int]) -> None:
        self.gpu_mem_bytes_by_id = gpu_mem_bytes_by_id
        self.cached = False

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()

    # -- measurement (NDIF_REQUEST_LOG) ----------------------------------------------------------
    async def run(self, request) -> None:
        self._measured = {"id": request.id, "payload_bytes": len(request.payload or b"")}
        gc.collect()
        _reset_peak()
        self._measured["rss_before_bytes"] = _status_bytes("VmRSS")
        started, cpu = time.time(), time.process_time()
        try:
            await super().run(request)
        finally:
            self._measured.update(seconds=round(time.time() - started, 4), cpu_s=round(time.process_time() - cpu, 4),
                                  peak_rss_bytes=_status_bytes("VmHWM"), finished=time.time())
            path = os.environ.get("NDIF_REQUEST_LOG")
            if path:
                with open(path, "a") as f:
                    f.write(json.dumps(self._measured) + "\n")

    def execute(self, request):
        """The stock ``execute`` (ndif 0.1.2), with a clock around each step."""
        from ndif.common.schema.request import BackendRequestModel

        self.execution_ident = threading.current_thread().ident
        tracer, deserialize_ms = prepare_traced_block(self.model, request.payload, request.compress,
                                                      deserialize=BackendRequestModel.deserialize)
        self.commit()
        started = time.time()
        saved = execute_traced_block(tracer, self.dtype)
        saving = time.time()
        buffer = io.BytesIO()
        torch.save(saved, buffer, pickle_module=cpu_pickle_module())
        data = buffer.getvalue()
        self._measured.update(deserialize_s=round(deserialize_ms / 1000, 4), block_s=round(saving - started, 4),
                              save_s=round(time.time() - saving, 4), result_bytes=len(data))
        return data, deserialize_ms

    def prepare_result(self, request, data: bytes) -> bytes:
        started = time.time()
        blob = super().prepare_result(request, data)
        self._measured.update(compress_s=round(time.time() - started, 4), result_wire_bytes=len(blob))
        return blob

    def upload_bytes(self, request, data: bytes) -> str:
        started = time.time()
        url = super().upload_bytes(request, data)
        self._measured["store_s"] = round(time.time() - started, 4)
        return url

    def report(self, request, status: str, exec_ms, **kwargs) -> None:
        self._measured["status"] = status
        super().report(request, status, exec_ms, **kwargs)


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelActor(CPUModelDeployment):
    """The Ray actor the controller instantiates per replica."""
