"""An app whose import takes long (for Ctrl-C during the app check): it writes the
file named by $SLOW_IMPORT_MARKER, then sleeps."""

import os
import time

with open(os.environ["SLOW_IMPORT_MARKER"], "w") as f:
    f.write(str(os.getpid()))
time.sleep(60)


async def app(scope, receive, send):
    pass
