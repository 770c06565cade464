"""framepipe as a shared service: `python main.py serve` (see service/server.py).

    paths.py    the roots jobs may use; every client path checked against them
    store.py    jobs in SQLite
    devices.py  GPUs' figures, health and the weighted choice of device
    models.py   the model manager (lazy load, offload to host memory, release when idle)
    jobs.py     job settings and the scheduler (pipeline.run per job, in a thread)
    service.py  the operations, implemented once
    api.py      HTTP API (FastAPI), page.html, and the MCP endpoint (mcp_tools.py)
"""
