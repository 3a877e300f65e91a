"""``ptr train`` in this process, as ``python -m ptr.train`` runs it, then one JSON line naming the threads
still running: a process group left alive at exit keeps its gloo and TCPStore threads
(``pt_gloo_runloop``, ``gloo_tcp_loop``, ``pt_tcpstore_uv``), and those are what aborted a rank during
interpreter finalization now and then (``terminate called without an active exception``)."""

import gc
import json
import os
import sys

from ptr.train.cli import main

code = main(sys.argv[1:])
gc.collect()
threads = []
for task in os.listdir("/proc/self/task"):  # native threads too, which threading.enumerate() does not list
    try:
        with open(f"/proc/self/task/{task}/comm") as f:
            threads.append(f.read().strip())
    except OSError:  # ended meanwhile
        pass
print(json.dumps({"event": "threads_after_train", "threads": sorted(threads)}), flush=True)
raise SystemExit(code)
