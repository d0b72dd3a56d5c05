"""A CPU model actor for ndif 0.1.2, selected with NDIF_MODEL_IMPORT_PATH=cpu_deployment.CPUModelActor.

The stock actor (ndif.services.ray.deployments.modeling.base.ModelActor) pins, caps and syncs CUDA
devices while loading, parking (HOT<->WARM) and cleaning up after each request. On a CPU-only
machine those calls raise, so this subclass loads the model the same way (nnsight's
``HuggingFaceModel.from_model_key(..., dispatch=True, dtype=...)``) without a device placement
and leaves out every ``torch.cuda`` call. Request execution (``run``/``execute``) is the stock one.
The controller still believes it placed the replica on the fake GPU that ``ray start --num-gpus=1``
advertises; nothing here touches it.
"""

from __future__ import annotations

import gc
from typing import Dict

import ray
from nnsight.modeling.huggingface import HuggingFaceModel

from ndif.services.ray.deployments.modeling.base import KILL_REASON_PREEMPTED, BaseModelDeployment


class CPUModelDeployment(BaseModelDeployment):
    def load_from_disk(self) -> HuggingFaceModel:
        kwargs = dict(self.kwargs)
        if not kwargs.get("trust_remote_code"):  # the actor args always carry it; nnsight 0.8.1 keys on its absence
            kwargs.pop("trust_remote_code", None)
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, **kwargs)
        model._module.requires_grad_(False)
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


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelActor(CPUModelDeployment):
    """The Ray actor the controller instantiates per replica."""
