"""`python -m signaling [gunicorn options]`: check every setting, then serve with gunicorn.conf.py.

gunicorn reads `WEB_CONCURRENCY` as a number while it is imported, before
any config file runs, so a bad value would be its traceback. Checked here
first, every bad setting is one line naming it, and so is an address it
cannot listen on (before gunicorn's first line). `make run` and the Procfile
start the service this way.
"""

import sys
from pathlib import Path

from .config import settings_or_exit
from .startup import check_listen

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    check_listen(settings_or_exit())
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--chdir", str(ROOT), *sys.argv[1:], "app:app"]
    run()


if __name__ == "__main__":
    main()
