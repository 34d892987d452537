"""config/gunicorn.conf.py as deployed, with the access log off for the benchmark.

Every contender (waconv, pywa, the bare endpoint) is served with this same file, so they differ
only in their application code. The access log is off because one line per request would
measure the log's destination; the error log (and each app's own logging) stays as it is.
"""

import runpy
from pathlib import Path

_deployed = runpy.run_path(
    str(Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py")
)
globals().update({k: v for k, v in _deployed.items() if not k.startswith("__")})
accesslog = None
try:  # an earlier commit's tree (bench/baseline.py) may not have it; the access log is off
    import waconv.accesslog  # noqa: F401
except ImportError:
    logger_class = "gunicorn.glogging.Logger"
