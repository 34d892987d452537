"""gunicorn settings for waconv: ``gunicorn -c config/gunicorn.conf.py wsgi:app``.

Every value can be overridden on the command line or through GUNICORN_CMD_ARGS.
"""

import os

bind = os.environ.get("WACONV_BIND", "127.0.0.1:8000")
# Webhook requests are short and mostly database-bound: 2-4 workers per core.
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# Threads, not sync workers: a sync worker is one connection at a time, so four clients that
# send their headers and never their body stalled all four (/healthz took 33 s). A stalled
# body now holds one thread of a worker's 32; gunicorn hands a connection to a thread only
# once its first bytes arrive. README "Production" has the figures, and the proxy that ends
# the problem for good (config/nginx.conf buffers bodies before they reach gunicorn).
worker_class = "gthread"
threads = int(os.environ.get("WACONV_WEB_THREADS", "32"))
# Meta gives up on a slow endpoint and redelivers; never hold a request this long.
timeout = 30
graceful_timeout = 30
keepalive = 5
# %(U)s is the path without the query string (the webhook handshake carries the verify token
# in it) and without the user id of /admin/conversations/<id>: no secret or customer data in
# a log.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
logger_class = "waconv.accesslog.AccessLogger"
errorlog = "-"
# gunicorn 25.1+ opens a control socket at ~/.gunicorn/gunicorn.ctl: a second instance on the
# host (a deploy's new one beside the old, tests) logs "[ERROR] Control server error ... already
# in use". waconv does not use gunicornc; older gunicorns ignore the setting.
control_socket_disable = True


def child_exit(server, worker):  # gunicorn's hook signature
    """Drop a dead worker's Prometheus files so counters stay right across restarts."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
