"""Model Gallery web app: the one web UI (catalogue, model cards, experiments, lineage, try it, monitoring).

It serves the single-page app and its files, proxies `/api/<service>/...` to the services with the
caller's token, and answers a few aggregations (`/api/gallery/...`) that join what several services
say; it imports no other service's package, only `gallery_common`.
"""
