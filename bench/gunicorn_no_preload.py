"""config/gunicorn.py with preload_app off: what `make bench` compares preloading against.

    gunicorn -c config/gunicorn.py -c bench/gunicorn_no_preload.py   (the last -c wins)
"""

import runpy
from pathlib import Path

globals().update(runpy.run_path(str(Path(__file__).resolve().parents[1] / "config" / "gunicorn.py")))
preload_app = False
