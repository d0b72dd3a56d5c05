"""Push one result of N MB through an NDIF stack and time it: the probe behind ``remote.MAX_RESULT_BYTES``.

The tensor is made on the server (random float32), so the upload is a few bytes and what is timed is
the way back: torch.save, zstd, the object store, the download and the client's decode. Run it against
the loopback stack (``scripts/ndif/server.sh start MODEL_DIR auto``) with growing sizes:

    python scripts/ndif/result_probe.py http://127.0.0.1:PORT MODEL_DIR 256
"""

import json
import resource
import sys
import time

import nnsight.modeling.huggingface as hf
import torch
from nnsight import LanguageModel

import vneuron.runtime.remote as ndif

url, model_dir, mb = sys.argv[1], sys.argv[2], float(sys.argv[3])
hf._ID_CACHE[model_dir] = model_dir  # the server knows the model by its directory (server.sh)
model = LanguageModel(model_dir, tokenizer=model_dir)
n = int(mb * 2**20 / 4)
t0 = time.time()
with model.trace("help your family", remote=url, blocking=False) as tracer:
    big = torch.randn(n).save()
job = tracer.backend.job_id
t1 = time.time()
values = ndif.wait(ndif.RemoteTarget(url, timeout=3600, poll_interval=0.5), "probe", job, ndif.collector(model.to_model_key(), url))
t2 = time.time()
print(json.dumps({"mb": mb, "ok": values["big"].numel() == n, "submit_s": round(t1 - t0, 2), "wait_s": round(t2 - t1, 2),
                  "client_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
