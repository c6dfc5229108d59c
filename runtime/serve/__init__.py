"""rsicrc.runtime.serve: the captioning and search service behind `rsicrc serve` (DESIGN §12).

    settings.py    ServeSettings: every option and default of the service, checked
    batcher.py     Batcher: bounded queue + one worker thread forming batches per decoding options
    inputs.py      request parameters and images (uploads, or paths inside --allow-paths)
    service.py     Service: model, index and batcher of one process; loading; drain
    metrics.py     ServeMetrics: Prometheus counters and histograms
    middleware.py  body-size limit (413) and request metrics, plain ASGI
    openapi.py     the request/response schemas FastAPI cannot infer
    app.py         create_app: the FastAPI routes and error mapping
    server.py      serve(settings): bind, run uvicorn, load in the background, drain on SIGTERM

Torch-free. FastAPI, uvicorn and prometheus-client (`pip install 'rsicrc[serve]'`) are imported
only when an app or server is built, so every module here imports without them.
"""
