"""nginx in front of the model server: the reference for what a compiled proxy costs (issue 20).

The gateway's CPU per request is measured against the model server's. nginx doing nothing but forwarding
(one worker, keep-alive to the model server, no auth, routing, metrics or fallbacks) shows how far a
compiled data path would take it: the figure for the decision the gateway target leaves open. `make bench`
puts Debian's nginx binary into the venv (`$(BIN)/nginx`, nothing installed system-wide, no service).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CONFIG = """
worker_processes 1;
daemon off;
master_process on;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_body_buffer_size 1m;
    client_max_body_size 8m;
    keepalive_requests 1000000;
    upstream modelserver {{
        server 127.0.0.1:{upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://modelserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 64k;
        }}
    }}
}}
"""


def nginx_binary() -> Path | None:
    """The venv's nginx (`make bench` puts it there), else one on PATH."""
    beside = Path(sys.executable).parent / "nginx"
    if beside.exists():
        return beside
    found = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    return Path(found) if found else None


def nginx_command(binary: Path, prefix: Path, port: int, upstream: int) -> list[str]:
    """Write the configuration under `prefix` and return the command that runs nginx in the foreground."""
    prefix.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would switch to `nobody`
    conf = prefix / "nginx.conf"
    conf.write_text(CONFIG.format(user=user, prefix=prefix, port=port, upstream=upstream))
    return [str(binary), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
